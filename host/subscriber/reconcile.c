#include "reconcile.h"
