// XNOR-popcount GEMM and convolution for binary (+-1) weights and inputs (XNOR-Net, Rastegari et al.
// 2016, section 3.2; BNN, Courbariaux et al. 2016). With bit 1 = +1 and K valid bits,
//     a . b = K - 2 popcount(a xor b).
// Positions a convolution pads with zero hold bit 0 in the packed image, so popcount over them counts
// the weight's 1-bits there (corr); the dot product over the valid taps is V - 2 (popcount - corr).
//
// Weights are stored in panels of 8 output channels: panel[k][j] = word k of channel n0 + j, so one
// broadcast input word is XORed with 8 weight words at once. popcount: AVX-512 VPOPCNTDQ where the
// compiler targets it, else AVX2 nibble lookup (vpshufb, Mula / Kurz / Lemire), else scalar popcount.
// Built by effdnn/quant/kernels/__init__.py with -O3 -march=native -fopenmp; loaded through ctypes.
#include <cstdint>
#include <cstring>
#include <cmath>
#include <vector>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

typedef uint64_t u64;
static const int NB = 8;  // output channels per weight panel

extern "C" int effdnn_kernel_isa() {
#if defined(__AVX512VPOPCNTDQ__) && defined(__AVX512F__)
  return 3;
#elif defined(__AVX2__)
  return 2;
#else
  return 1;
#endif
}

// popcount(x0(k) ^ panel[k][j]) and popcount(x1(k) ^ panel[k][j]) summed over k, for j < 8, as int32 o0[j],
// o1[j]; x0, x1 give word k of the two input rows (read from a packed row, or straight from the image).
template <class X0, class X1>
static inline void popc_rows(X0 x0, X1 x1, const u64* panel, int64_t kw, int32_t* o0, int32_t* o1) {
#if defined(__AVX512VPOPCNTDQ__) && defined(__AVX512F__)
  __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
  for (int64_t k = 0; k < kw; ++k) {
    __m512i w = _mm512_loadu_si512((const void*)(panel + k * NB));
    a0 = _mm512_add_epi64(a0, _mm512_popcnt_epi64(_mm512_xor_si512(w, _mm512_set1_epi64((long long)x0(k)))));
    a1 = _mm512_add_epi64(a1, _mm512_popcnt_epi64(_mm512_xor_si512(w, _mm512_set1_epi64((long long)x1(k)))));
  }
  _mm256_storeu_si256((__m256i*)o0, _mm512_cvtepi64_epi32(a0));
  _mm256_storeu_si256((__m256i*)o1, _mm512_cvtepi64_epi32(a1));
#elif defined(__AVX2__)
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i lo = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
  __m256i s00 = zero, s01 = zero, s10 = zero, s11 = zero;  // u64 sums: row r, channels 4h..4h+3
  int64_t k = 0;
  while (k < kw) {
    int64_t end = k + 31 < kw ? k + 31 : kw;  // byte counters hold at most 31 * 8
    __m256i b00 = zero, b01 = zero, b10 = zero, b11 = zero;
    for (; k < end; ++k) {
      __m256i w0 = _mm256_loadu_si256((const __m256i*)(panel + k * NB));
      __m256i w1 = _mm256_loadu_si256((const __m256i*)(panel + k * NB + 4));
      __m256i y0 = _mm256_set1_epi64x((long long)x0(k)), y1 = _mm256_set1_epi64x((long long)x1(k));
#define EFFDNN_CNT(v) _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, lo)), \
                                      _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), lo)))
      __m256i v;
      v = _mm256_xor_si256(w0, y0); b00 = _mm256_add_epi8(b00, EFFDNN_CNT(v));
      v = _mm256_xor_si256(w1, y0); b01 = _mm256_add_epi8(b01, EFFDNN_CNT(v));
      v = _mm256_xor_si256(w0, y1); b10 = _mm256_add_epi8(b10, EFFDNN_CNT(v));
      v = _mm256_xor_si256(w1, y1); b11 = _mm256_add_epi8(b11, EFFDNN_CNT(v));
#undef EFFDNN_CNT
    }
    s00 = _mm256_add_epi64(s00, _mm256_sad_epu8(b00, zero));
    s01 = _mm256_add_epi64(s01, _mm256_sad_epu8(b01, zero));
    s10 = _mm256_add_epi64(s10, _mm256_sad_epu8(b10, zero));
    s11 = _mm256_add_epi64(s11, _mm256_sad_epu8(b11, zero));
  }
  // the low 32 bits of the four u64 sums of each half -> 8 int32 in channel order
  const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
  _mm256_storeu_si256((__m256i*)o0, _mm256_permute2x128_si256(_mm256_permutevar8x32_epi32(s00, even),
                                                              _mm256_permutevar8x32_epi32(s01, even), 0x20));
  _mm256_storeu_si256((__m256i*)o1, _mm256_permute2x128_si256(_mm256_permutevar8x32_epi32(s10, even),
                                                              _mm256_permutevar8x32_epi32(s11, even), 0x20));
#else
  for (int j = 0; j < NB; ++j) { o0[j] = 0; o1[j] = 0; }
  for (int64_t k = 0; k < kw; ++k)
    for (int j = 0; j < NB; ++j) {
      o0[j] += (int32_t)__builtin_popcountll(x0(k) ^ panel[k * NB + j]);
      o1[j] += (int32_t)__builtin_popcountll(x1(k) ^ panel[k * NB + j]);
    }
#endif
}

// Sign bits of rows: x (M, K) float, bit k of row m = (x[m,k] * s[k] + t[k] >= 0) (s, t may be null:
// identity) -> out (M, kw) words, bits >= K zero. absmean (M) or null: mean_k |x s + t| (XNOR-Net beta).
extern "C" void effdnn_pack_rows(const float* x, int64_t m, int64_t K, const float* s, const float* t,
                                 u64* out, int64_t kw, float* absmean, int nt) {
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && m > 1)
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * K;
    u64* o = out + r * kw;
    float acc = 0.f;
    int64_t k = 0;
#ifdef __AVX2__
    __m256 accv = _mm256_setzero_ps();
    const __m256 zero = _mm256_setzero_ps(), sign = _mm256_set1_ps(-0.f);
    for (; k + 8 <= K; k += 8) {  // 8 floats -> 8 bits (movemask), in place in their word
      __m256 v = _mm256_loadu_ps(xr + k);
      if (s) v = _mm256_fmadd_ps(v, _mm256_loadu_ps(s + k), _mm256_loadu_ps(t + k));
      const u64 bits = (u64)(unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_GE_OQ));
      if ((k & 63) == 0) o[k >> 6] = 0;
      o[k >> 6] |= bits << (k & 63);
      if (absmean) accv = _mm256_add_ps(accv, _mm256_andnot_ps(sign, v));
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, accv);
    for (int j = 0; j < 8; ++j) acc += lanes[j];
#endif
    if ((k & 63) == 0 && k < K) o[k >> 6] = 0;
    for (; k < K; ++k) {
      const float a = s ? xr[k] * s[k] + t[k] : xr[k];
      if ((k & 63) == 0) o[k >> 6] = 0;
      o[k >> 6] |= (u64)(a >= 0.f) << (k & 63);
      acc += std::fabs(a);
    }
    for (int64_t w = (K + 63) / 64; w < kw; ++w) o[w] = 0;
    if (absmean) absmean[r] = acc / (float)K;
  }
}

// out (M, N) int32 = k - 2 popcount(X[m] xor W[n]); W as panels (ceil(N / 8), kw, 8). X rows and W words
// hold zeros beyond bit k.
extern "C" void effdnn_xnor_gemm(const u64* x, int64_t m, const u64* panels, int64_t n, int64_t kw, int32_t k,
                                 int32_t* out, int nt) {
  const int64_t np = (n + NB - 1) / NB, pairs = (m + 1) / 2;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && pairs > 1)
  for (int64_t blk = 0; blk < (pairs + 7) / 8; ++blk) {
    alignas(32) int32_t o0[NB], o1[NB];
    for (int64_t p = 0; p < np; ++p) {
      const u64* panel = panels + p * kw * NB;
      int64_t jn = n - p * NB < NB ? n - p * NB : NB;
      for (int64_t q = blk * 8; q < pairs && q < blk * 8 + 8; ++q) {
        int64_t r0 = 2 * q, r1 = r0 + 1 < m ? r0 + 1 : r0;
        const u64 *a0 = x + r0 * kw, *a1 = x + r1 * kw;
        popc_rows([a0](int64_t i) { return a0[i]; }, [a1](int64_t i) { return a1[i]; }, panel, kw, o0, o1);
        for (int64_t j = 0; j < jn; ++j) {
          out[r0 * n + p * NB + j] = k - 2 * o0[j];
          if (r1 != r0) out[r1 * n + p * NB + j] = k - 2 * o1[j];
        }
      }
    }
  }
}

struct ConvGeom {
  int64_t B, C, H, W, N, kw, KH, KW, sh, sw, ph, pw, dh, dw, Ho, Wo, Hp, Wp, Cb, Np;
  int64_t segb, nseg, segw;  // a K-row's contiguous runs in the image: bytes each, how many, words each
};

// Implicit im2col: with the image (B, Hp, Wp, Cb) bytes, the K-row of an output pixel is nseg runs of
// segb contiguous bytes (one per kernel row i when dw = 1: KW taps of Cb bytes; else one per tap). The
// weights hold each run padded to segw whole words, so word q of run r is the 8 image bytes at
// woff[r segw + q] from the pixel's window origin, masked to the run (the image has 8 bytes of slack).
static void word_table(const ConvGeom& g, int64_t* woff, u64* wmask) {
  for (int64_t r = 0; r < g.nseg; ++r) {
    const int64_t i = g.dw == 1 ? r : r / g.KW, j = g.dw == 1 ? 0 : r % g.KW;
    const int64_t base = (i * g.dh * g.Wp + j * g.dw) * g.Cb;
    for (int64_t q = 0; q < g.segw; ++q) {
      const int64_t left = g.segb - 8 * q;
      woff[r * g.segw + q] = base + 8 * q;
      wmask[r * g.segw + q] = left >= 8 ? ~(u64)0 : (((u64)1 << (8 * left)) - 1);
    }
  }
}

static inline u64 load_word(const uint8_t* p) {
  u64 v;
  std::memcpy(&v, p, 8);
  return v;
}

// What follows the popcount, per output channel n (arrays padded to Np = 8 ceil(N / 8)):
//     y = (V + 2 corr - 2 popcount) * scale[n] * K + bias[n]            (the binary convolution)
//     y = y * g[n] + h[n]                                             (a folded BatchNorm, when g)
//     y = max(y, 0)                                                   (a folded ReLU, when relu)
//     y = y + r                                                       (a residual add, when r)
//     y = max(y, 0)                                                   (a ReLU after the add, relu_add)
struct Epilogue {
  const float *scale, *bias, *g, *h, *r;
  int relu, relu_add;
  int r_nchw;  // the residual is NCHW (conv_row transposes its row), else NHWC
};

static inline float hsum8(const float* v) {
  return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

// Phase 1: sign(x s + t) of every pixel, C bits (rounded up to bytes) per pixel, into a zero-padded
// (B, Hp, Wp, Cb) byte image; A (B, H, W) = mean_c |x s + t| when A is not null (XNOR-Net's K map).
// x is NCHW (nhwc = 0) or NHWC (nhwc = 1, channels_last: 8 channels -> one byte by movemask).
// Called inside a parallel region (its rows are shared among the threads).
static void pack_image(const float* x, const float* s, const float* t, const ConvGeom& g, int nhwc, int relu,
                       uint8_t* img, float* A) {
  // relu: a ReLU before the BatchNorm, max(x, 0)
#pragma omp for schedule(dynamic, 8)
  for (int64_t bh = 0; bh < g.B * g.H; ++bh) {
    const int64_t b = bh / g.H, h = bh % g.H;
    uint8_t* row = img + ((b * g.Hp + h + g.ph) * g.Wp + g.pw) * g.Cb;
    if (nhwc) {
      for (int64_t w = 0; w < g.W; ++w) {
        const float* xp = x + (bh * g.W + w) * g.C;
        uint8_t* dst = row + w * g.Cb;
        // |a| summed in 8 lanes (channel c in lane c % 8), then the tail: the order next_bits8 sums in
        alignas(32) float lanes[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        int64_t c = 0;
#ifdef __AVX2__
        const __m256 zero = _mm256_setzero_ps(), sign = _mm256_set1_ps(-0.f);
        __m256 accv = zero;
        for (; c + 8 <= g.C; c += 8) {
          const __m256 xv = relu ? _mm256_max_ps(_mm256_loadu_ps(xp + c), zero) : _mm256_loadu_ps(xp + c);
          const __m256 v = _mm256_fmadd_ps(xv, _mm256_loadu_ps(s + c), _mm256_loadu_ps(t + c));
          dst[c >> 3] = (uint8_t)_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_GE_OQ));
          accv = _mm256_add_ps(accv, _mm256_andnot_ps(sign, v));
        }
        _mm256_store_ps(lanes, accv);
#else
        for (; c + 8 <= g.C; c += 8) {
          uint8_t bits = 0;
          for (int j = 0; j < 8; ++j) {
            const float xv = xp[c + j], a = (relu ? (xv > 0.f ? xv : 0.f) : xv) * s[c + j] + t[c + j];
            bits |= (uint8_t)((a >= 0.f) << j);
            lanes[j] += std::fabs(a);
          }
          dst[c >> 3] = bits;
        }
#endif
        float acc = hsum8(lanes);
        for (; c < g.C; ++c) {
          const float a = (relu ? (xp[c] > 0.f ? xp[c] : 0.f) : xp[c]) * s[c] + t[c];
          if ((c & 7) == 0) dst[c >> 3] = 0;
          dst[c >> 3] |= (uint8_t)((a >= 0.f) << (c & 7));
          acc += std::fabs(a);
        }
        if (A) A[bh * g.W + w] = acc / (float)g.C;
      }
      continue;
    }
    std::vector<uint32_t> words(g.W);
    std::vector<float> acc(g.W, 0.f);
    for (int64_t c0 = 0; c0 < g.C; c0 += 32) {
      std::fill(words.begin(), words.end(), 0u);
      const int64_t c1 = c0 + 32 < g.C ? c0 + 32 : g.C;
      for (int64_t c = c0; c < c1; ++c) {
        const float* xr = x + ((b * g.C + c) * g.H + h) * g.W;
        const float sc = s[c], tc = t[c];
        const uint32_t sh = (uint32_t)(c - c0);
        uint32_t* wd = words.data();
        float* ac = acc.data();
        for (int64_t w = 0; w < g.W; ++w) {
          const float a = (relu ? (xr[w] > 0.f ? xr[w] : 0.f) : xr[w]) * sc + tc;
          wd[w] |= (uint32_t)(a >= 0.f) << sh;
          ac[w] += std::fabs(a);
        }
      }
      const int64_t nbytes = (c1 - c0 + 7) / 8;
      for (int64_t w = 0; w < g.W; ++w) std::memcpy(row + w * g.Cb + c0 / 8, &words[w], (size_t)nbytes);
    }
    if (A)
      for (int64_t w = 0; w < g.W; ++w) A[bh * g.W + w] = acc[w] / (float)g.C;
  }
}

// offsets (Ho Wo, Np): V + 2 corr of every output pixel and channel (V valid taps times C; corr the
// weight's 1-bits on the taps the convolution pads), the same for every image of the batch.
static void offset_table(const ConvGeom& g, const int32_t* wtap, int32_t* off) {
  for (int64_t ho = 0; ho < g.Ho; ++ho)
    for (int64_t wo = 0; wo < g.Wo; ++wo) {
      int32_t* o = off + (ho * g.Wo + wo) * g.Np;
      int64_t nvalid = 0;
      for (int64_t n = 0; n < g.Np; ++n) o[n] = 0;
      for (int64_t i = 0; i < g.KH; ++i) {
        const int64_t hi = ho * g.sh - g.ph + i * g.dh;
        for (int64_t j = 0; j < g.KW; ++j) {
          const int64_t wi = wo * g.sw - g.pw + j * g.dw;
          if (hi >= 0 && hi < g.H && wi >= 0 && wi < g.W) {
            ++nvalid;
          } else {
            for (int64_t n = 0; n < g.N; ++n) o[n] += 2 * wtap[n * g.KH * g.KW + i * g.KW + j];
          }
        }
      }
      for (int64_t n = 0; n < g.Np; ++n) o[n] += (int32_t)(nvalid * g.C);
    }
}

// K map of one output row: kv[wo] = sum of A over the valid taps / (KH KW) (XNOR-Net's K = A * k), by
// column sums over the valid kernel rows (col: W floats), then sums over the valid kernel columns.
static void k_row(const ConvGeom& g, const float* Ab, int64_t ho, float* col, float* kv) {
  for (int64_t w = 0; w < g.W; ++w) col[w] = 0.f;
  for (int64_t i = 0; i < g.KH; ++i) {
    const int64_t hi = ho * g.sh - g.ph + i * g.dh;
    if (hi < 0 || hi >= g.H) continue;
    const float* a = Ab + hi * g.W;
    for (int64_t w = 0; w < g.W; ++w) col[w] += a[w];
  }
  const float inv = 1.f / (float)(g.KH * g.KW);
  for (int64_t wo = 0; wo < g.Wo; ++wo) {
    float ksum = 0.f;
    for (int64_t j = 0; j < g.KW; ++j) {
      const int64_t wi = wo * g.sw - g.pw + j * g.dw;
      if (wi >= 0 && wi < g.W) ksum += col[wi];
    }
    kv[wo] = ksum * inv;
  }
}

// The epilogue of 8 channels (panel p) of one output pixel, written to dst (NHWC: channels contiguous).
static inline void epilogue8(const int32_t* cnt, const int32_t* off, float kv, const Epilogue& e, int64_t p,
                             int64_t jn, const float* res, float* dst) {
#ifdef __AVX2__
  const int64_t c = p * NB;
  const __m256i d = _mm256_sub_epi32(_mm256_loadu_si256((const __m256i*)off),
                                     _mm256_slli_epi32(_mm256_loadu_si256((const __m256i*)cnt), 1));
  __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(d), _mm256_loadu_ps(e.scale + c));
  v = _mm256_fmadd_ps(v, _mm256_set1_ps(kv), _mm256_loadu_ps(e.bias + c));
  if (e.g) v = _mm256_fmadd_ps(v, _mm256_loadu_ps(e.g + c), _mm256_loadu_ps(e.h + c));
  if (e.relu) v = _mm256_max_ps(v, _mm256_setzero_ps());
  if (res) {
    const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)jn), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    v = _mm256_add_ps(v, jn == NB ? _mm256_loadu_ps(res) : _mm256_maskload_ps(res, live));
    if (e.relu_add) v = _mm256_max_ps(v, _mm256_setzero_ps());
  }
  if (jn == NB) {
    _mm256_storeu_ps(dst, v);
  } else {
    alignas(32) float tmp[NB];
    _mm256_store_ps(tmp, v);
    for (int64_t j = 0; j < jn; ++j) dst[j] = tmp[j];
  }
#else
  for (int64_t j = 0; j < jn; ++j) {
    const int64_t n = p * NB + j;
    float v = (float)(off[j] - 2 * cnt[j]) * e.scale[n] * kv + e.bias[n];
    if (e.g) v = v * e.g[n] + e.h[n];
    if (e.relu && !(v > 0.f)) v = 0.f;
    if (res) {
      v += res[j];
      if (e.relu_add && !(v > 0.f)) v = 0.f;
    }
    dst[j] = v;
  }
#endif
}

// The next binary layer's input, written by the epilogue instead of floats (Larq Compute Engine / daBNN
// style): bit n of byte p of output pixel (b, ho, wo) in the next layer's zero-padded image (B, Ho + 2 ph,
// Wo + 2 pw, Np / 8) is [y_n s_n + t_n >= 0] (its BatchNorm, then sign), and A (B, Ho, Wo) its K map's
// mean_n |y_n s_n + t_n| (when A).
struct NextInput {
  uint8_t* img;
  float* A;
  const float *s, *t;
  int64_t ph, pw;
};

static inline void next_bits8(const float* v8, const NextInput& nx, int64_t p, int64_t jn, uint8_t* dst, float* acc8) {
#ifdef __AVX2__
  const int64_t c = p * NB;
  const __m256 a = _mm256_fmadd_ps(_mm256_loadu_ps(v8), _mm256_loadu_ps(nx.s + c), _mm256_loadu_ps(nx.t + c));
  const __m256 live = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)jn),
                                                             _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
  *dst = (uint8_t)_mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(a, _mm256_setzero_ps(), _CMP_GE_OQ), live));
  const __m256 mag = _mm256_and_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.f), a), live);
  _mm256_storeu_ps(acc8, _mm256_add_ps(_mm256_loadu_ps(acc8), mag));
#else
  uint8_t bits = 0;
  for (int64_t j = 0; j < jn; ++j) {
    const float a = v8[j] * nx.s[p * NB + j] + nx.t[p * NB + j];
    bits |= (uint8_t)((a >= 0.f) << j);
    acc8[j] += std::fabs(a);
  }
  *dst = bits;
#endif
}

// Phase 2, one output row (b, ho) into y (B, Ho, Wo, N), or into the next layer's input (nx.img).
static void conv_row(const uint8_t* img, const ConvGeom& g, const int64_t* woff, const u64* wmask, const u64* panels,
                     const int32_t* offs, const float* A, const Epilogue& e, const NextInput& nx, int64_t b,
                     int64_t ho, float* col, float* kv, float* acc, float* rtile, float* y) {
  if (A) k_row(g, A + b * g.H * g.W, ho, col, kv);
  else for (int64_t wo = 0; wo < g.Wo; ++wo) kv[wo] = 1.f;
  alignas(32) int32_t o0[NB], o1[NB];
  alignas(32) float v0[NB], v1[NB];
  const int64_t np = g.Np / NB, step = g.sw * g.Cb;
  const uint8_t* origin = img + (b * g.Hp + ho * g.sh) * g.Wp * g.Cb;  // window of output pixel (ho, 0)
  float* yrow = nx.img ? nullptr : y + (b * g.Ho + ho) * g.Wo * g.N;
  const float* rrow = e.r ? e.r + (b * g.Ho + ho) * g.Wo * g.N : nullptr;
  if (e.r && e.r_nchw) {  // this row of an NCHW residual, transposed to (Wo, N) in rtile
    const float* src = e.r + b * g.N * g.Ho * g.Wo + ho * g.Wo;
    for (int64_t n = 0; n < g.N; ++n)
      for (int64_t wo = 0; wo < g.Wo; ++wo) rtile[wo * g.N + n] = src[n * g.Ho * g.Wo + wo];
    rrow = rtile;
  }
  const int32_t* orow = offs + ho * g.Wo * g.Np;
  const int64_t wp2 = g.Wo + 2 * nx.pw;
  uint8_t* nrow = nx.img ? nx.img + ((b * (g.Ho + 2 * nx.ph) + ho + nx.ph) * wp2 + nx.pw) * np : nullptr;
  if (nx.img) std::fill(acc, acc + g.Wo * NB, 0.f);
  for (int64_t p = 0; p < np; ++p) {
    const u64* panel = panels + p * g.kw * NB;
    const int64_t jn = g.N - p * NB < NB ? g.N - p * NB : NB;
    for (int64_t wo = 0; wo < g.Wo; wo += 2) {
      const int64_t w1 = wo + 1 < g.Wo ? wo + 1 : wo;
      const uint8_t *p0 = origin + wo * step, *p1 = origin + w1 * step;
      popc_rows([=](int64_t k) { return load_word(p0 + woff[k]) & wmask[k]; },
                [=](int64_t k) { return load_word(p1 + woff[k]) & wmask[k]; }, panel, g.kw, o0, o1);
      const int64_t i0 = wo * g.N + p * NB, i1 = w1 * g.N + p * NB;
      if (nx.img) {
        epilogue8(o0, orow + wo * g.Np + p * NB, kv[wo], e, p, NB, nullptr, v0);
        next_bits8(v0, nx, p, jn, nrow + wo * np + p, acc + wo * NB);
        if (w1 != wo) {
          epilogue8(o1, orow + w1 * g.Np + p * NB, kv[w1], e, p, NB, nullptr, v1);
          next_bits8(v1, nx, p, jn, nrow + w1 * np + p, acc + w1 * NB);
        }
        continue;
      }
      epilogue8(o0, orow + wo * g.Np + p * NB, kv[wo], e, p, jn, rrow ? rrow + i0 : nullptr, yrow + i0);
      if (w1 != wo) epilogue8(o1, orow + w1 * g.Np + p * NB, kv[w1], e, p, jn, rrow ? rrow + i1 : nullptr, yrow + i1);
    }
  }
  if (nx.img && nx.A)
    for (int64_t wo = 0; wo < g.Wo; ++wo) nx.A[(b * g.Ho + ho) * g.Wo + wo] = hsum8(acc + wo * NB) / (float)g.N;
}

static std::vector<float> padded(const float* v, int64_t n, int64_t np, float fill) {
  std::vector<float> out((size_t)np, fill);
  if (v) std::memcpy(out.data(), v, (size_t)n * sizeof(float));
  return out;
}

template <class T>
static T* ptr_at(const uint64_t* ptrs, int i) { return reinterpret_cast<T*>(ptrs[i]); }

// XNOR-Net / BNN convolution: BN (x s + t) -> sign -> packed image -> XNOR-popcount of each pixel's window
// (implicit im2col, word_table) against the packed +-1 weights (panels of 8 channels, taps in (i, j, c)
// order, each run padded to whole words) -> * scale (* K) + bias -> [* g + h] -> [ReLU] -> [+ residual
// (B, Ho, Wo, N)] -> [ReLU] -> NHWC float y, or the next binary layer's packed input (NextInput).
// shape: B C H W N kw KH KW sh sw ph pw dh dw | x is NHWC | relu | relu after the residual | K map |
//        next layer's padding ph pw | next layer's K map | a ReLU on x before its BatchNorm |
//        the residual is NCHW (else NHWC)
// ptrs: x s t panels wtap scale bias g h residual y | img_in A_in (a packed input: x, s, t unused) |
//       img_out A_out s_next t_next (the next layer's input instead of y)
// wtap (N, KH KW): popcount of each channel's weight bits per tap (for the padding correction).
extern "C" void effdnn_xnor_conv2d(const int64_t* shape, const uint64_t* ptrs, int nt) {
  ConvGeom g;
  g.B = shape[0]; g.C = shape[1]; g.H = shape[2]; g.W = shape[3]; g.N = shape[4]; g.kw = shape[5];
  g.KH = shape[6]; g.KW = shape[7]; g.sh = shape[8]; g.sw = shape[9]; g.ph = shape[10]; g.pw = shape[11];
  g.dh = shape[12]; g.dw = shape[13];
  const int nhwc = (int)shape[14], kscale = (int)shape[17];
  g.Ho = (g.H + 2 * g.ph - g.dh * (g.KH - 1) - 1) / g.sh + 1;
  g.Wo = (g.W + 2 * g.pw - g.dw * (g.KW - 1) - 1) / g.sw + 1;
  g.Hp = g.H + 2 * g.ph; g.Wp = g.W + 2 * g.pw; g.Cb = (g.C + 7) / 8; g.Np = (g.N + NB - 1) / NB * NB;
  g.segb = g.dw == 1 ? g.KW * g.Cb : g.Cb; g.nseg = g.dw == 1 ? g.KH : g.KH * g.KW; g.segw = (g.segb + 7) / 8;
  if (g.kw != g.nseg * g.segw) return;  // the weights were laid out for another geometry (ops.py checks)
  std::vector<int64_t> woff((size_t)g.kw);
  std::vector<u64> wmask((size_t)g.kw);
  word_table(g, woff.data(), wmask.data());
  const float *post_g = ptr_at<const float>(ptrs, 7), *s_next = ptr_at<const float>(ptrs, 15);
  const std::vector<float> sc = padded(ptr_at<const float>(ptrs, 5), g.N, g.Np, 0.f);
  const std::vector<float> bi = padded(ptr_at<const float>(ptrs, 6), g.N, g.Np, 0.f);
  const std::vector<float> pg = padded(post_g, g.N, g.Np, 1.f), ph = padded(ptr_at<const float>(ptrs, 8), g.N, g.Np, 0.f);
  const std::vector<float> s2 = padded(s_next, g.N, g.Np, 0.f), t2 = padded(ptr_at<const float>(ptrs, 16), g.N, g.Np, 0.f);
  const Epilogue e{sc.data(), bi.data(), post_g ? pg.data() : nullptr, ph.data(), ptr_at<const float>(ptrs, 9),
                   (int)shape[15], (int)shape[16], (int)shape[22]};
  const NextInput nx{ptr_at<uint8_t>(ptrs, 13), shape[20] ? ptr_at<float>(ptrs, 14) : nullptr, s2.data(), t2.data(),
                     shape[18], shape[19]};
  std::vector<int32_t> offs((size_t)(g.Ho * g.Wo * g.Np));
  offset_table(g, ptr_at<const int32_t>(ptrs, 4), offs.data());
  const uint8_t* img = ptr_at<const uint8_t>(ptrs, 11);
  const float* A = kscale ? ptr_at<const float>(ptrs, 12) : nullptr;
  std::vector<uint8_t> own;
  std::vector<float> ownA;
  const bool pack = !img;
  if (pack) {
    own.assign((size_t)(g.B * g.Hp * g.Wp * g.Cb + 8), 0);
    ownA.resize(kscale ? (size_t)(g.B * g.H * g.W) : 0);
    img = own.data();
    A = kscale ? ownA.data() : nullptr;
  }
  const u64* panels = ptr_at<const u64>(ptrs, 3);
  float* y = ptr_at<float>(ptrs, 10);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    if (pack)  // phase 1, then (after the loop's barrier) phase 2
      pack_image(ptr_at<const float>(ptrs, 0), ptr_at<const float>(ptrs, 1), ptr_at<const float>(ptrs, 2), g, nhwc,
                 (int)shape[21], own.data(), kscale ? ownA.data() : nullptr);
    std::vector<float> col((size_t)g.W), kv((size_t)g.Wo), acc((size_t)(g.Wo * NB));
    std::vector<float> rtile(e.r_nchw ? (size_t)(g.Wo * g.N) : 0);
#pragma omp for schedule(dynamic, 4)
    for (int64_t bh = 0; bh < g.B * g.Ho; ++bh)
      conv_row(img, g, woff.data(), wmask.data(), panels, offs.data(), A, e, nx, bh / g.Ho, bh % g.Ho, col.data(),
               kv.data(), acc.data(), rtile.data(), y);
  }
}
