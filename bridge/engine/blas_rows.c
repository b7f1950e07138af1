/* mlx-bridge: few-row float32 matmuls on a kernel of its own (bridge/engine/blas_rows.py).
 *
 * libmlx calls cblas_sgemm for every float32 matmul; this library exports it ahead of OpenBLAS.
 * A row-major call of at most max_rows rows of A (not transposed) runs here: a decoding step's
 * linear layers (x @ W.T: B transposed) and its attention (scores @ V: B as it is). Every other
 * call goes to OpenBLAS's sgemm unchanged. OpenBLAS copies the whole weight into its panel
 * layout before multiplying, however few the rows; these tiles read each weight row once, from
 * memory, and reuse it from L1 for every row of A.
 *
 * Each output is summed in the same order whatever the number of rows and however the columns
 * are split between threads: a sequence decodes to the same bits alone or in a batch. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/futex.h>

typedef void (*sgemm_t)(int, int, int, int, int, int, float, const float *, int,
                        const float *, int, float, float *, int);
typedef int (*threads_t)(void);

enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };

#if defined(__AVX512F__)
#define VL 16
#elif defined(__AVX__)
#define VL 8
#else
#define VL 4
#endif
typedef float vf __attribute__((vector_size(VL * sizeof(float))));

#define MR 4              /* rows of A a tile takes */
#define NR 4              /* rows of B^T (columns of C) a dot-product tile takes */
#define KC 2048           /* the depth one pass of the dot-product tiles keeps in cache */
#define WIDTH (2 * VL)    /* columns a thread's share is a multiple of */
#define MAX_THREADS 64
#define MIN_SPLIT (1L << 17) /* multiply-adds worth handing a second thread */
/* How long a worker spins for the next matmul before it sleeps on the futex. Spinning
 * through a whole decoding step's gaps matters: with 0.2 ms, after a few batches of 8, a lone
 * stream decoded 8% slower (its worker, woken each step, ran late: measured 18.7 against 20.5
 * tok/s before the batches, 23 with 2 ms). Under load the engine drops to 1 thread and the
 * pool is not used: the worker sleeps 2 ms later. */
#define SPIN_NS 2000000L

static sgemm_t real_sgemm;
static threads_t blas_threads; /* OpenBLAS's thread count: the engine follows the load */
static int max_rows;
static long forwarded; /* calls run here (mlx_bridge_rows_forwarded: for the tests) */

typedef struct {
    int m, n, k;
    float alpha, beta;
    const float *a; int lda;
    const float *b; int ldb;
    float *c; int ldc;
    int trans_b; /* B is n x k (x @ W.T, a linear layer); else k x n */
} job_t;

static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }

static inline float hsum(vf v) {
    float s = 0.0f;
    for (int i = 0; i < VL; i++) s += v[i];
    return s;
}

static inline void put(const job_t *j, int first, int i, int col, float s) {
    float *out = j->c + (long)i * j->ldc + col;
    if (!first) *out += j->alpha * s;
    else if (j->beta == 0.0f) *out = j->alpha * s; /* C may hold garbage: never read it */
    else *out = j->alpha * s + j->beta * *out;
}

/* B transposed: C[i0.., j0..] (+)= A[i0.., k0..k1) . B[j0.., k0..k1)^T, an MR_ x NR_ tile */
#define DOT_TILE(MR_, NR_)                                                                 \
static void dot_##MR_##_##NR_(const job_t *j, int i0, int j0, int k0, int k1, int first) { \
    vf acc[MR_][NR_];                                                                      \
    for (int r = 0; r < MR_; r++) for (int s = 0; s < NR_; s++) acc[r][s] = (vf){0};       \
    const float *a = j->a + (long)i0 * j->lda, *b = j->b + (long)j0 * j->ldb;              \
    int kv = k0 + (k1 - k0) / VL * VL;                                                     \
    for (int p = k0; p < kv; p += VL) {                                                    \
        vf bv[NR_];                                                                        \
        for (int s = 0; s < NR_; s++) bv[s] = load(b + (long)s * j->ldb + p);              \
        for (int r = 0; r < MR_; r++) {                                                    \
            vf av = load(a + (long)r * j->lda + p);                                        \
            for (int s = 0; s < NR_; s++) acc[r][s] += av * bv[s];                         \
        }                                                                                  \
    }                                                                                      \
    for (int r = 0; r < MR_; r++)                                                          \
        for (int s = 0; s < NR_; s++) {                                                    \
            float sum = hsum(acc[r][s]);                                                   \
            for (int p = kv; p < k1; p++)                                                  \
                sum += a[(long)r * j->lda + p] * b[(long)s * j->ldb + p];                  \
            put(j, first, i0 + r, j0 + s, sum);                                            \
        }                                                                                  \
}
DOT_TILE(4, 4) DOT_TILE(3, 4) DOT_TILE(2, 4) DOT_TILE(1, 4)
DOT_TILE(4, 1) DOT_TILE(3, 1) DOT_TILE(2, 1) DOT_TILE(1, 1)

/* B as it is (k x n): C[i0.., j0..j0+NV_*VL) = A[i0.., :] . B[:, j0..], the whole depth */
#define AXPY_TILE(MR_, NV_)                                                                \
static void axpy_##MR_##_##NV_(const job_t *j, int i0, int j0) {                            \
    vf acc[MR_][NV_];                                                                      \
    for (int r = 0; r < MR_; r++) for (int s = 0; s < NV_; s++) acc[r][s] = (vf){0};       \
    const float *a = j->a + (long)i0 * j->lda, *b = j->b + j0;                             \
    for (int p = 0; p < j->k; p++) {                                                       \
        vf bv[NV_];                                                                        \
        for (int s = 0; s < NV_; s++) bv[s] = load(b + (long)p * j->ldb + s * VL);         \
        for (int r = 0; r < MR_; r++) {                                                    \
            float x = a[(long)r * j->lda + p];                                             \
            vf av;                                                                         \
            for (int l = 0; l < VL; l++) av[l] = x;                                        \
            for (int s = 0; s < NV_; s++) acc[r][s] += av * bv[s];                         \
        }                                                                                  \
    }                                                                                      \
    for (int r = 0; r < MR_; r++)                                                          \
        for (int s = 0; s < NV_; s++)                                                      \
            for (int l = 0; l < VL; l++) put(j, 1, i0 + r, j0 + s * VL + l, acc[r][s][l]); \
}
AXPY_TILE(4, 2) AXPY_TILE(3, 2) AXPY_TILE(2, 2) AXPY_TILE(1, 2)
AXPY_TILE(4, 1) AXPY_TILE(3, 1) AXPY_TILE(2, 1) AXPY_TILE(1, 1)

/* a column past the last whole vector, summed in the tiles' order */
static void axpy_column(const job_t *j, int i, int col) {
    float sum = 0.0f;
    for (int p = 0; p < j->k; p++)
        sum += j->a[(long)i * j->lda + p] * j->b[(long)p * j->ldb + col];
    put(j, 1, i, col, sum);
}

typedef void (*dot_t)(const job_t *, int, int, int, int, int);
typedef void (*axpy_t)(const job_t *, int, int);
static dot_t const dot_four[MR + 1] = {0, dot_1_4, dot_2_4, dot_3_4, dot_4_4};
static dot_t const dot_one[MR + 1] = {0, dot_1_1, dot_2_1, dot_3_1, dot_4_1};
static axpy_t const axpy_two[MR + 1] = {0, axpy_1_2, axpy_2_2, axpy_3_2, axpy_4_2};
static axpy_t const axpy_one[MR + 1] = {0, axpy_1_1, axpy_2_1, axpy_3_1, axpy_4_1};

static inline int rows_at(const job_t *j, int i) { return j->m - i < MR ? j->m - i : MR; }

/* columns [n0, n1) of C, every row: a weight tile is read once and reused for all rows */
static void run_dot(const job_t *j, int n0, int n1) {
    for (int k0 = 0; k0 < j->k; k0 += KC) {
        int k1 = j->k - k0 > KC ? k0 + KC : j->k;
        for (int c = n0; c < n1; c += NR) {
            int nr = n1 - c < NR ? n1 - c : NR;
            for (int i = 0; i < j->m; i += MR) {
                if (nr == NR) dot_four[rows_at(j, i)](j, i, c, k0, k1, k0 == 0);
                else for (int s = 0; s < nr; s++) dot_one[rows_at(j, i)](j, i, c + s, k0, k1, k0 == 0);
            }
        }
    }
}

static void run_axpy(const job_t *j, int n0, int n1) {
    for (int c = n0; c < n1;) {
        int left = n1 - c, step = left >= 2 * VL ? 2 * VL : left >= VL ? VL : 1;
        for (int i = 0; i < j->m; i += MR) {
            if (step == 2 * VL) axpy_two[rows_at(j, i)](j, i, c);
            else if (step == VL) axpy_one[rows_at(j, i)](j, i, c);
            else for (int r = 0; r < rows_at(j, i); r++) axpy_column(j, i + r, c);
        }
        c += step;
    }
}

static void run_cols(const job_t *j, int n0, int n1) {
    if (j->trans_b) run_dot(j, n0, n1);
    else run_axpy(j, n0, n1);
}

/* ---- the caller and up to MAX_THREADS - 1 workers, each taking a share of the columns ---- */
static job_t pool_job;
static int pool_gen;      /* futex word: (generation << 8) | the number of shares */
static int pool_done;     /* shares finished this generation, the caller's not counted */
static int pool_sleepers;
static int pool_workers;
static int pool_start[MAX_THREADS]; /* the generation current when each worker was started */
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;

static void share(int part, int parts, int n, int *n0, int *n1) {
    long units = (n + WIDTH - 1) / WIDTH;
    *n0 = (int)(units * part / parts) * WIDTH;
    *n1 = (int)(units * (part + 1) / parts) * WIDTH;
    if (*n0 > n) *n0 = n;
    if (*n1 > n) *n1 = n;
}

static inline void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static void *worker(void *arg) {
    int id = (int)(long)arg, seen = pool_start[id]; /* its first job is the generation after */
    for (;;) {
        int g;
        unsigned spins = 0;
        long since = 0;
        while ((g = __atomic_load_n(&pool_gen, __ATOMIC_ACQUIRE)) == seen) {
            if (++spins % 256) { relax(); continue; }
            long now = now_ns(); /* every 256 pauses: a pause takes 10-50 ns by the CPU */
            if (!since) since = now;
            if (now - since < SPIN_NS) continue;
            __atomic_add_fetch(&pool_sleepers, 1, __ATOMIC_SEQ_CST);
            syscall(SYS_futex, &pool_gen, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
            __atomic_sub_fetch(&pool_sleepers, 1, __ATOMIC_SEQ_CST);
            since = 0;
        }
        seen = g;
        int parts = g & 0xff;
        if (id >= parts) continue; /* not needed for this one */
        int n0, n1;
        share(id, parts, pool_job.n, &n0, &n1);
        run_cols(&pool_job, n0, n1);
        __atomic_add_fetch(&pool_done, 1, __ATOMIC_RELEASE);
    }
    return NULL;
}

static void forget_workers(void) { pool_workers = 0; } /* a forked child has none */

static int grow_pool(int want) { /* under pool_lock */
    static int registered;
    if (!registered) { pthread_atfork(NULL, NULL, forget_workers); registered = 1; }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* workers inherit it: signals stay with Python */
    while (pool_workers < want) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 1 << 18);
        pool_start[pool_workers + 1] = pool_gen; /* read by the worker: no job changes it first */
        int rc = pthread_create(&t, &attr, worker, (void *)(long)(pool_workers + 1));
        pthread_attr_destroy(&attr);
        if (rc) break; /* fewer threads, still correct */
        pool_workers++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return pool_workers;
}

static void run(const job_t *j) {
    long threads = blas_threads ? blas_threads() : 1;
    long work = (long)j->m * j->n * j->k, units = (j->n + WIDTH - 1) / WIDTH;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > work / MIN_SPLIT) threads = work / MIN_SPLIT;
    if (threads > units) threads = units;
    /* another thread's matmul holds the pool: this one runs on its caller alone */
    if (threads <= 1 || pthread_mutex_trylock(&pool_lock) != 0) { run_cols(j, 0, j->n); return; }
    int parts = 1 + grow_pool((int)threads - 1);
    if (parts > threads) parts = (int)threads;
    pool_job = *j;
    __atomic_store_n(&pool_done, 0, __ATOMIC_RELAXED);
    unsigned g = (unsigned)__atomic_load_n(&pool_gen, __ATOMIC_RELAXED);
    __atomic_store_n(&pool_gen, (int)((((g >> 8) + 1) << 8) | (unsigned)parts), __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&pool_sleepers, __ATOMIC_SEQ_CST))
        syscall(SYS_futex, &pool_gen, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
    int n0, n1;
    share(0, parts, j->n, &n0, &n1);
    run_cols(j, n0, n1);
    while (__atomic_load_n(&pool_done, __ATOMIC_ACQUIRE) < parts - 1) relax();
    pthread_mutex_unlock(&pool_lock);
}

void mlx_bridge_rows_init(void *sgemm, void *threads, int rows) {
    real_sgemm = (sgemm_t)sgemm;
    blas_threads = (threads_t)threads;
    max_rows = rows;
}

void mlx_bridge_rows_set_max(int rows) { max_rows = rows; } /* between matmuls only */
long mlx_bridge_rows_forwarded(void) { return forwarded; }
void *mlx_bridge_rows_target(void) { return (void *)real_sgemm; } /* for the doctor */
int mlx_bridge_rows_max(void) { return max_rows; }

void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta,
                 float *c, int ldc) {
    if (!real_sgemm) /* never initialised: the next cblas_sgemm in the search order */
        real_sgemm = (sgemm_t)dlsym(RTLD_NEXT, "cblas_sgemm");
    if (order == ROW_MAJOR && ta == NO_TRANS && (tb == TRANS || tb == NO_TRANS)
        && m >= 1 && m <= max_rows && n > 0 && k > 0 && alpha != 0.0f && lda >= k && ldc >= n
        && ldb >= (tb == TRANS ? k : n)) {
        job_t j = {m, n, k, alpha, beta, a, lda, b, ldb, c, ldc, tb == TRANS};
        run(&j);
        __atomic_fetch_add(&forwarded, 1, __ATOMIC_RELAXED);
        return;
    }
    real_sgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
