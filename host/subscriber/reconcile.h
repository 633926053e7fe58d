/* Reconciliation: compares Redis (sold counts, order records, pending orders) with SQLite and
 * republishes what is missing. Blocking: runs on its own thread or in snatch-reconcile. */
#ifndef SNATCH_RECONCILE_H
#define SNATCH_RECONCILE_H
int reconcile_placeholder(void);
#endif
