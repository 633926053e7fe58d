/* See orders_stream.h. */
#include "orders_stream.h"

natsStatus orders_stream_ensure(jsCtx *js, jsErrCode *jerr, int *created)
{
    jsStreamInfo *si = NULL;
    jsErrCode code = 0;
    if (created)
        *created = 0;
    natsStatus s = js_GetStreamInfo(&si, js, ORDERS_STREAM, NULL, &code);
    if (s == NATS_NOT_FOUND) {
        jsStreamConfig cfg;
        const char *subjects[] = {ORDERS_SUBJECT_PREFIX ">"};
        jsStreamConfig_Init(&cfg);
        cfg.Name = ORDERS_STREAM;
        cfg.Subjects = subjects;
        cfg.SubjectsLen = 1;
        cfg.Storage = js_FileStorage;
        cfg.Duplicates = (int64_t)ORDERS_DUPLICATES_WINDOW_MS * 1000000;
        s = js_AddStream(&si, js, &cfg, NULL, &code);
        if (s == NATS_OK && created)
            *created = 1;
        else if (s != NATS_OK && code == JSStreamNameExistErr)
            s = NATS_OK; /* someone else created it meanwhile */
    }
    jsStreamInfo_Destroy(si);
    if (jerr)
        *jerr = code;
    return s;
}
