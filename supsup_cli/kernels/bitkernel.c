/* Products of bit-packed masks with float vectors, without writing unpacked floats.
 *
 * Built at first use by supsup_cli/kernels/c_kernel.py (gcc -O3 -march=native) and loaded with ctypes;
 * numpy code is the fallback. Masks are rows of `nbytes` bytes. The vectors here are in "lane
 * order": within each group of 8 floats the order is reversed, so that bit b (least significant
 * first) of byte j pairs with element 8j + b. Python reverses the groups (np.packbits stores the
 * most significant bit first), which lets a byte of mask bits act directly as a SIMD lane mask.
 *
 * matvec:  out[r]   = sum over set bits (r, i) of vec[i]        (threads split the rows)
 * rmatvec: out[i]  += sum over rows r with bit (r, i) set of w[r] (threads split the columns)
 * matmat:  out[r, c] = sum over set bits (r, i) of mat[i, c]      (threads split the rows;
 *          mat in natural order, most significant bit first)
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#define MATVEC_BLOCK 2048  /* mask bytes per column block: 64 KiB of vector floats (L2) */
#define RMATVEC_BLOCK 512  /* mask bytes per column block: 16 KiB of output floats (L1) */
#define MAX_THREADS 256
#define MATMAT_COLUMNS 16 /* floats per vector value: one AVX-512 register (two AVX2 ones) */
#define MATMAT_BLOCKS 4   /* vector values per block of columns (64 columns) */
#define MATMAT_TILE 16    /* mask bytes per tile: 32 nibble tables of 16 x 64 floats (128 KiB) */
#define MATMAT_CHUNK 1024 /* mask bytes per row copied tile by tile at a time (a multiple of TILE) */

/* MATMAT_COLUMNS floats as one value (gcc/clang vector extension: one zmm, or two ymm). */
typedef float v16 __attribute__((vector_size(4 * MATMAT_COLUMNS), aligned(64)));

/* Sum of vec[8*j + b] over the set bits b of bytes [j0, j1) of one row (lane order). */
static float row_dot(const uint8_t *row, const float *vec, int64_t j0, int64_t j1) {
    float total = 0.0f;
    int64_t j = j0;
#if defined(__AVX512F__)
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    for (; j + 8 <= j1; j += 8) {
        uint64_t w;
        memcpy(&w, row + j, 8); /* little endian: byte j in bits 0..7 */
        const float *v = vec + 8 * j;
        a0 = _mm512_mask_add_ps(a0, (__mmask16)w, a0, _mm512_loadu_ps(v));
        a1 = _mm512_mask_add_ps(a1, (__mmask16)(w >> 16), a1, _mm512_loadu_ps(v + 16));
        a2 = _mm512_mask_add_ps(a2, (__mmask16)(w >> 32), a2, _mm512_loadu_ps(v + 32));
        a3 = _mm512_mask_add_ps(a3, (__mmask16)(w >> 48), a3, _mm512_loadu_ps(v + 48));
    }
    total = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
#elif defined(__AVX2__)
    const __m256i select = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (; j + 2 <= j1; j += 2) {
        __m256i b0 = _mm256_and_si256(_mm256_set1_epi32(row[j]), select);
        __m256i b1 = _mm256_and_si256(_mm256_set1_epi32(row[j + 1]), select);
        __m256 m0 = _mm256_castsi256_ps(_mm256_cmpeq_epi32(b0, select));
        __m256 m1 = _mm256_castsi256_ps(_mm256_cmpeq_epi32(b1, select));
        a0 = _mm256_add_ps(a0, _mm256_and_ps(m0, _mm256_loadu_ps(vec + 8 * j)));
        a1 = _mm256_add_ps(a1, _mm256_and_ps(m1, _mm256_loadu_ps(vec + 8 * j + 8)));
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, _mm256_add_ps(a0, a1));
    for (int b = 0; b < 8; b++) total += lanes[b];
#endif
    for (; j < j1; j++) {
        const unsigned byte = row[j];
        for (int b = 0; b < 8; b++) total += (byte >> b & 1u) ? vec[8 * j + b] : 0.0f;
    }
    return total;
}

#if defined(__AVX512F__)
#define ROW_GROUP 8
/* row_dot for ROW_GROUP rows at once over whole 8-byte words [j0, j1): each load of the vector
 * serves all of them, so the loop runs on mask bytes rather than on vector reloads. */
static void rows_dot(const uint8_t *row, int64_t stride, const float *vec, int64_t j0, int64_t j1,
                     float *out) {
    __m512 acc[ROW_GROUP][2];
    for (int r = 0; r < ROW_GROUP; r++)
        for (int q = 0; q < 2; q++) acc[r][q] = _mm512_setzero_ps();
    for (int64_t j = j0; j < j1; j += 8) {
        const float *v = vec + 8 * j;
        const __m512 v0 = _mm512_loadu_ps(v), v1 = _mm512_loadu_ps(v + 16);
        const __m512 v2 = _mm512_loadu_ps(v + 32), v3 = _mm512_loadu_ps(v + 48);
        for (int r = 0; r < ROW_GROUP; r++) {
            uint64_t w;
            memcpy(&w, row + r * stride + j, 8);
            acc[r][0] = _mm512_mask_add_ps(acc[r][0], (__mmask16)w, acc[r][0], v0);
            acc[r][1] = _mm512_mask_add_ps(acc[r][1], (__mmask16)(w >> 16), acc[r][1], v1);
            acc[r][0] = _mm512_mask_add_ps(acc[r][0], (__mmask16)(w >> 32), acc[r][0], v2);
            acc[r][1] = _mm512_mask_add_ps(acc[r][1], (__mmask16)(w >> 48), acc[r][1], v3);
        }
    }
    for (int r = 0; r < ROW_GROUP; r++)
        out[r] += _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]));
}
#else
#define ROW_GROUP 1
#endif

/* out[i] += w for the set bits i of bytes [j0, j1) of one row (out in lane order). */
static void row_axpy(const uint8_t *row, float w, float *out, int64_t j0, int64_t j1) {
    int64_t j = j0;
#if defined(__AVX512F__)
    const __m512 add = _mm512_set1_ps(w);
    for (; j + 2 <= j1; j += 2) {
        uint16_t bits;
        memcpy(&bits, row + j, 2);
        float *o = out + 8 * j;
        _mm512_storeu_ps(o, _mm512_mask_add_ps(_mm512_loadu_ps(o), bits, _mm512_loadu_ps(o), add));
    }
#elif defined(__AVX2__)
    const __m256i select = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256 add = _mm256_set1_ps(w);
    for (; j < j1; j++) {
        __m256i b = _mm256_and_si256(_mm256_set1_epi32(row[j]), select);
        __m256 m = _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, select));
        float *o = out + 8 * j;
        _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), _mm256_and_ps(m, add)));
    }
#endif
    for (; j < j1; j++) {
        const unsigned byte = row[j];
        for (int b = 0; b < 8; b++) out[8 * j + b] += (byte >> b & 1u) ? w : 0.0f;
    }
}

typedef struct {
    const uint8_t *packed;
    int64_t rows, nbytes, lo, hi; /* this thread's rows (matvec) or bytes (rmatvec) */
    const float *in;
    float *out;
    int64_t columns; /* matmat: columns of `in` and `out` (a multiple of MATMAT_COLUMNS) */
} job_t;

static void *matvec_job(void *arg) {
    const job_t *job = arg;
    for (int64_t r = job->lo; r < job->hi; r++) job->out[r] = 0.0f;
    for (int64_t j0 = 0; j0 < job->nbytes; j0 += MATVEC_BLOCK) {
        int64_t j1 = j0 + MATVEC_BLOCK < job->nbytes ? j0 + MATVEC_BLOCK : job->nbytes;
        int64_t r = job->lo;
#if ROW_GROUP > 1
        int64_t words = j0 + (j1 - j0) / 8 * 8; /* whole 8-byte words; row_dot does the rest */
        for (; r + ROW_GROUP <= job->hi; r += ROW_GROUP) {
            rows_dot(job->packed + r * job->nbytes, job->nbytes, job->in, j0, words, job->out + r);
            for (int g = 0; g < ROW_GROUP; g++)
                job->out[r + g] += row_dot(job->packed + (r + g) * job->nbytes, job->in, words, j1);
        }
#endif
        for (; r < job->hi; r++)
            job->out[r] += row_dot(job->packed + r * job->nbytes, job->in, j0, j1);
    }
    return NULL;
}

static void *rmatvec_job(void *arg) {
    const job_t *job = arg;
    for (int64_t j0 = job->lo; j0 < job->hi; j0 += RMATVEC_BLOCK) {
        int64_t j1 = j0 + RMATVEC_BLOCK < job->hi ? j0 + RMATVEC_BLOCK : job->hi;
        for (int64_t r = 0; r < job->rows; r++)
            if (job->in[r] != 0.0f)
                row_axpy(job->packed + r * job->nbytes, job->in[r], job->out, j0, j1);
    }
    return NULL;
}

/* matmat by tables ("four Russians"): for each nibble of a tile of mask bytes, the 16 sums of
 * its 4 matrix rows are built once (15 row additions) and shared by all the masks; each mask
 * byte then costs two table rows added per block of columns, instead of 8 multiply-adds per
 * column as in the float stack's matmul. The masks are read from memory once (tile_major), and
 * from that cached copy once per block of up to MATMAT_BLOCKS x 16 columns (64: fastest of 16,
 * 32 and 64 on a Xeon with AVX-512, k = 2,500: the tables, 128 KiB, stay in L2 while the rows'
 * accumulators stay in registers). */
static inline __attribute__((always_inline)) void matmat_block(
    const job_t *job, const uint8_t *src, int64_t tile_stride, int64_t row_stride, int64_t j_lo,
    int64_t j_hi, int64_t c0, int blocks) {
    v16 tables[2 * MATMAT_TILE][16][MATMAT_BLOCKS]; /* on the stack: provably unaliased */
    const int64_t columns = job->columns;
    for (int64_t j0 = j_lo; j0 < j_hi; j0 += MATMAT_TILE) {
        const int64_t tile = j0 + MATMAT_TILE < j_hi ? MATMAT_TILE : j_hi - j0;
        for (int64_t t = 0; t < 2 * tile; t++) {
            /* mat rows in natural order (np.packbits: the byte's most significant bit first):
             * low nibble t = 2i of byte j0 + i holds rows 8 (j0 + i) + 4 .. + 7, high nibble
             * t = 2i + 1 rows 8 (j0 + i) .. + 3, and its bit q goes with the row 3 - q of those */
            const float *base = job->in + (8 * j0 + 8 * (t / 2) + (t % 2 ? 0 : 4)) * columns + c0;
            for (int q = 0; q < blocks; q++) tables[t][0][q] = (v16){0};
            for (int s = 1; s < 16; s++) {
                const float *add = base + (3 - __builtin_ctz(s)) * columns;
                for (int q = 0; q < blocks; q++) {
                    v16 value;
                    memcpy(&value, add + q * MATMAT_COLUMNS, sizeof value);
                    tables[t][s][q] = tables[t][s & (s - 1)][q] + value;
                }
            }
        }
        const uint8_t *tile_rows = src + (j0 - j_lo) / MATMAT_TILE * tile_stride;
        for (int64_t r = job->lo; r < job->hi; r++) {
            const uint8_t *row = tile_rows + (r - job->lo) * row_stride;
            float *o = job->out + r * columns + c0;
            v16 acc[MATMAT_BLOCKS];
            memcpy(acc, o, blocks * sizeof acc[0]);
            for (int64_t t = 0; t < tile; t++) {
                const v16 *low = tables[2 * t][row[t] & 15u];
                const v16 *high = tables[2 * t + 1][row[t] >> 4];
                for (int q = 0; q < blocks; q++) acc[q] += low[q] + high[q];
            }
            memcpy(o, acc, blocks * sizeof acc[0]);
        }
    }
}

/* The job's rows, bytes [j_lo, j_hi), copied tile by tile (each tile's rows contiguous): the
 * loop over rows then streams through memory instead of touching one page per row (at
 * k = 2,500 and D = 315,200, 1.4x faster). Each row's bytes are read in one run. */
static void tile_major(const job_t *job, uint8_t *tiled, int64_t j_lo, int64_t j_hi) {
    const int64_t count = job->hi - job->lo;
    for (int64_t r = 0; r < count; r++) {
        const uint8_t *row = job->packed + (job->lo + r) * job->nbytes;
        int64_t j0 = j_lo;
        uint8_t *to = tiled + r * MATMAT_TILE;
        for (; j0 + MATMAT_TILE <= j_hi; j0 += MATMAT_TILE, to += count * MATMAT_TILE)
            memcpy(to, row + j0, MATMAT_TILE); /* a constant size: one vector move */
        if (j0 < j_hi) memcpy(to, row + j0, j_hi - j0);
    }
}

static void *matmat_job(void *arg) {
    const job_t *job = arg;
    const int64_t count = job->hi - job->lo;
    /* without memory for the copy, the rows are read where they are (slower, same sums) */
    uint8_t *tiled = count > 0 ? malloc(count * MATMAT_CHUNK) : NULL;
    for (int64_t j_lo = 0; j_lo < job->nbytes; j_lo += MATMAT_CHUNK) {
        const int64_t j_hi = j_lo + MATMAT_CHUNK < job->nbytes ? j_lo + MATMAT_CHUNK : job->nbytes;
        const uint8_t *src = job->packed + job->lo * job->nbytes + j_lo;
        int64_t tile_stride = MATMAT_TILE, row_stride = job->nbytes;
        if (tiled != NULL) {
            tile_major(job, tiled, j_lo, j_hi);
            src = tiled, tile_stride = count * MATMAT_TILE, row_stride = MATMAT_TILE;
        }
        for (int64_t c0 = 0; c0 < job->columns; c0 += MATMAT_BLOCKS * MATMAT_COLUMNS) {
            const int64_t width = (job->columns - c0) / MATMAT_COLUMNS;
            const int blocks = width < MATMAT_BLOCKS ? (int)width : MATMAT_BLOCKS;
            switch (blocks) { /* constant widths: loops unrolled */
            case 1: matmat_block(job, src, tile_stride, row_stride, j_lo, j_hi, c0, 1); break;
            case 2: matmat_block(job, src, tile_stride, row_stride, j_lo, j_hi, c0, 2); break;
            case 3: matmat_block(job, src, tile_stride, row_stride, j_lo, j_hi, c0, 3); break;
            default: matmat_block(job, src, tile_stride, row_stride, j_lo, j_hi, c0, MATMAT_BLOCKS);
                break;
            }
        }
    }
    free(tiled);
    return NULL;
}

/* Split [0, extent) into `threads` runs (multiples of `align`) and run `work` on each. */
static void run_split(void *(*work)(void *), const uint8_t *packed, int64_t rows, int64_t nbytes,
                      const float *in, float *out, int64_t columns, int64_t extent, int64_t align,
                      int threads) {
    int64_t units = (extent + align - 1) / align;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > units) threads = (int)units;
    if (threads < 1) threads = 1;
    job_t jobs[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int t = 0; t < threads; t++) {
        int64_t lo = units * t / threads * align, hi = units * (t + 1) / threads * align;
        jobs[t] = (job_t){packed, rows, nbytes, lo, hi < extent ? hi : extent, in, out, columns};
    }
    for (int t = 1; t < threads; t++) started[t] = pthread_create(&ids[t], NULL, work, &jobs[t]) == 0;
    work(&jobs[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t]) pthread_join(ids[t], NULL);
        else work(&jobs[t]); /* no thread could be started: do its share here */
    }
}

int supsup_matvec(const uint8_t *packed, int64_t rows, int64_t nbytes, const float *vec,
                  float *out, int threads) {
    run_split(matvec_job, packed, rows, nbytes, vec, out, 1, rows, 1, threads);
    return 0;
}

int supsup_rmatvec(const uint8_t *packed, int64_t rows, int64_t nbytes, const float *weights,
                   float *out, int threads) {
    run_split(rmatvec_job, packed, rows, nbytes, weights, out, 1, nbytes, 64, threads);
    return 0;
}

/* out (rows, columns) must start at zero; mat is (8 * nbytes, columns) in natural order (not
 * lane order: no copy of a large matrix), with columns a multiple of MATMAT_COLUMNS (the caller
 * pads). */
int supsup_matmat(const uint8_t *packed, int64_t rows, int64_t nbytes, const float *mat,
                  int64_t columns, float *out, int threads) {
    if (columns % MATMAT_COLUMNS) return 1;
    run_split(matmat_job, packed, rows, nbytes, mat, out, columns, rows, 1, threads);
    return 0;
}
