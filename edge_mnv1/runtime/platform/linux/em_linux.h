/* What the Linux program's files give each other. */
#ifndef EM_LINUX_H_
#define EM_LINUX_H_

/* Starts the worker threads of TVM's parallel loops (pool.c); at most EM_MAX_THREADS. */
void em_pool_start(int threads);
/* 1 when this CPU has every feature the kernels were compiled for, else 0 with the reason on
 * stderr (cpu.c). */
int em_cpu_features_ok(void);

#endif /* EM_LINUX_H_ */
