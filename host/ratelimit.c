#include "ratelimit.h"
