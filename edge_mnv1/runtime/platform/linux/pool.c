/* A fixed pthread pool for TVM's parallel loops (TVMBackendParallelLaunch). Threads are
 * started once, before serving; a launch wakes them, runs task 0 on the caller and waits.
 * Nothing is allocated per launch. A model makes ~30 launches per inference, so a worker
 * spins briefly on the launch counter before it sleeps on the condition variable: waking a
 * sleeping thread costs ~10 us, more than many small kernels take. */
#include <pthread.h>
#include <stdatomic.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>

#include "em_backend.h"
#include "em_linux.h"

static pthread_t g_threads[EM_MAX_THREADS];
static int g_nthreads = 1;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_wake = PTHREAD_COND_INITIALIZER;
static pthread_cond_t g_done = PTHREAD_COND_INITIALIZER;
static _Atomic uint64_t g_generation;
static _Atomic int g_pending_fast;
#define EM_SPIN_ROUNDS 200000
static em_parallel_lambda g_fn;
static void* g_cdata;
static em_parallel_env_t g_env;
static int g_failed;

/* Barrier state for TVMBackendParallelBarrier (sense-reversing). */
static pthread_mutex_t g_bar_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_bar_cv = PTHREAD_COND_INITIALIZER;
static int g_bar_count;
static uint64_t g_bar_phase;

static void* worker(void* arg) {
  int id = (int)(intptr_t)arg;
  em_workspace_set_thread((uint32_t)id);
  uint64_t seen = 0;
  for (;;) {
    for (int i = 0; i < EM_SPIN_ROUNDS && atomic_load(&g_generation) == seen; ++i) {
#if defined(__x86_64__)
      __builtin_ia32_pause();
#elif defined(__aarch64__)
      __asm__ volatile("yield");
#endif
    }
    pthread_mutex_lock(&g_mu);
    while (atomic_load(&g_generation) == seen) pthread_cond_wait(&g_wake, &g_mu);
    seen = atomic_load(&g_generation);
    em_parallel_lambda fn = g_fn;
    void* cdata = g_cdata;
    int run = id < g_env.num_task;
    pthread_mutex_unlock(&g_mu);
    int rc = run ? fn(id, &g_env, cdata) : 0;
    if (rc != 0) g_failed = 1;
    if (atomic_fetch_sub(&g_pending_fast, 1) == 1) {
      pthread_mutex_lock(&g_mu);
      pthread_cond_signal(&g_done);
      pthread_mutex_unlock(&g_mu);
    }
  }
  return NULL;
}

void em_pool_start(int threads) {
  if (threads < 1) threads = 1;
  if (threads > EM_MAX_THREADS) threads = EM_MAX_THREADS;
  g_nthreads = threads;
  for (int i = 1; i < threads; ++i)
    pthread_create(&g_threads[i], NULL, worker, (void*)(intptr_t)i);
}

int TVMBackendParallelLaunch(em_parallel_lambda flambda, void* cdata, int num_task) {
  int n = (num_task <= 0 || num_task > g_nthreads) ? g_nthreads : num_task;
  if (n == 1) {
    em_parallel_env_t env = {NULL, 1};
    return flambda(0, &env, cdata);
  }
  pthread_mutex_lock(&g_mu);
  g_fn = flambda;
  g_cdata = cdata;
  g_env.sync_handle = NULL;
  g_env.num_task = n;
  g_failed = 0;
  atomic_store(&g_pending_fast, g_nthreads - 1);
  atomic_fetch_add(&g_generation, 1);
  pthread_cond_broadcast(&g_wake);
  pthread_mutex_unlock(&g_mu);
  int rc = flambda(0, &g_env, cdata);
  for (int i = 0; i < EM_SPIN_ROUNDS && atomic_load(&g_pending_fast) > 0; ++i) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  }
  pthread_mutex_lock(&g_mu);
  while (atomic_load(&g_pending_fast) > 0) pthread_cond_wait(&g_done, &g_mu);
  if (g_failed) rc = -1;
  pthread_mutex_unlock(&g_mu);
  return rc;
}

int TVMBackendParallelBarrier(int task_id, em_parallel_env_t* penv) {
  (void)task_id;
  pthread_mutex_lock(&g_bar_mu);
  uint64_t phase = g_bar_phase;
  if (++g_bar_count == penv->num_task) {
    g_bar_count = 0;
    ++g_bar_phase;
    pthread_cond_broadcast(&g_bar_cv);
  } else {
    while (phase == g_bar_phase) pthread_cond_wait(&g_bar_cv, &g_bar_mu);
  }
  pthread_mutex_unlock(&g_bar_mu);
  return 0;
}
