#include "redis.h"
