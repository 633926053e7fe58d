#include "sale.h"
