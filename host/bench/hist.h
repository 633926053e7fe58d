/* Latency histogram (placeholder until snatch-bench lands). */
#ifndef SNATCH_HIST_H
#define SNATCH_HIST_H
int hist_placeholder(void);
#endif
