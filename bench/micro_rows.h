/* The names of bench/micro's ready-path rows (its table and CSV), which coldstart --goals
 * reads back from micro's CSV. */
#ifndef WL_BENCH_MICRO_ROWS_H
#define WL_BENCH_MICRO_ROWS_H

#define MICRO_ROW_ENSURE "ready path: wl_ensure vs pshared mutex lock+unlock"
#define MICRO_ROW_KEY                                                                              \
    "ready path: wl_key_ensure (prepared key; max_age 0) vs pshared mutex lock+unlock"
#define MICRO_ROW_TARGET                                                                           \
    "ready path: wl_pg_target_ensure (prepared target; default opts) vs pshared mutex lock+unlock"
#define MICRO_ROW_PG "ready path: wl_pg_ensure (default opts) vs pshared mutex lock+unlock"

#endif
