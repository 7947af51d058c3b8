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

// popcount(x0 ^ panel[k][j]) and popcount(x1 ^ panel[k][j]) summed over k, for j < 8.
static inline void popc_rows(const u64* x0, const u64* x1, const u64* panel, int64_t kw, uint32_t* o0, uint32_t* o1) {
#if defined(__AVX512VPOPCNTDQ__) && defined(__AVX512F__)
  __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
  for (int64_t k = 0; k < kw; ++k) {
    __m512i w = _mm512_loadu_si512((const void*)(panel + k * NB));
    a0 = _mm512_add_epi64(a0, _mm512_popcnt_epi64(_mm512_xor_si512(w, _mm512_set1_epi64((long long)x0[k]))));
    a1 = _mm512_add_epi64(a1, _mm512_popcnt_epi64(_mm512_xor_si512(w, _mm512_set1_epi64((long long)x1[k]))));
  }
  alignas(64) u64 t0[8], t1[8];
  _mm512_store_si512((void*)t0, a0);
  _mm512_store_si512((void*)t1, a1);
  for (int j = 0; j < NB; ++j) { o0[j] = (uint32_t)t0[j]; o1[j] = (uint32_t)t1[j]; }
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
      __m256i y0 = _mm256_set1_epi64x((long long)x0[k]), y1 = _mm256_set1_epi64x((long long)x1[k]);
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
  alignas(32) u64 t[16];
  _mm256_store_si256((__m256i*)t, s00); _mm256_store_si256((__m256i*)(t + 4), s01);
  _mm256_store_si256((__m256i*)(t + 8), s10); _mm256_store_si256((__m256i*)(t + 12), s11);
  for (int j = 0; j < NB; ++j) { o0[j] = (uint32_t)t[j]; o1[j] = (uint32_t)t[8 + j]; }
#else
  for (int j = 0; j < NB; ++j) { o0[j] = 0; o1[j] = 0; }
  for (int64_t k = 0; k < kw; ++k)
    for (int j = 0; j < NB; ++j) {
      o0[j] += (uint32_t)__builtin_popcountll(x0[k] ^ panel[k * NB + j]);
      o1[j] += (uint32_t)__builtin_popcountll(x1[k] ^ panel[k * NB + j]);
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
    uint32_t o0[NB], o1[NB];
    for (int64_t p = 0; p < np; ++p) {
      const u64* panel = panels + p * kw * NB;
      int64_t jn = n - p * NB < NB ? n - p * NB : NB;
      for (int64_t q = blk * 8; q < pairs && q < blk * 8 + 8; ++q) {
        int64_t r0 = 2 * q, r1 = r0 + 1 < m ? r0 + 1 : r0;
        popc_rows(x + r0 * kw, x + r1 * kw, panel, kw, o0, o1);
        for (int64_t j = 0; j < jn; ++j) {
          out[r0 * n + p * NB + j] = k - 2 * (int32_t)o0[j];
          if (r1 != r0) out[r1 * n + p * NB + j] = k - 2 * (int32_t)o1[j];
        }
      }
    }
  }
}

struct ConvGeom {
  int64_t B, C, H, W, N, kw, KH, KW, sh, sw, ph, pw, dh, dw, Ho, Wo, Hp, Wp, Cb;
};

// Phase 1: sign(x s + t) of every pixel, C bits (rounded up to bytes) per pixel, into a zero-padded
// (B, Hp, Wp, Cb) byte image; A (B, H, W) = mean_c |x s + t| when A is not null (XNOR-Net's K map).
static void pack_image(const float* x, const float* s, const float* t, const ConvGeom& g, uint8_t* img, float* A,
                       int nt) {
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t bh = 0; bh < g.B * g.H; ++bh) {
    const int64_t b = bh / g.H, h = bh % g.H;
    std::vector<uint32_t> words(g.W);
    std::vector<float> acc(g.W, 0.f);
    uint8_t* row = img + ((b * g.Hp + h + g.ph) * g.Wp + g.pw) * g.Cb;
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
          const float a = xr[w] * sc + tc;
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

// im2col on bits: the packed K-row (taps in (i, j) order, Cb bytes each) of output pixel (ho, wo).
// Segments are copied in whole 8-byte moves; the overrun lands where the next segment goes, and past the
// last one the row's tail is zeroed again (the image carries 8 bytes of slack for the over-read).
static inline void copy_bytes(uint8_t* dst, const uint8_t* src, int64_t len) {
  for (int64_t o = 0; o < len; o += 8) std::memcpy(dst + o, src + o, 8);
}

static inline void gather_row(const uint8_t* img, const ConvGeom& g, int64_t b, int64_t ho, int64_t wo, uint8_t* dst) {
  for (int64_t i = 0; i < g.KH; ++i) {
    const uint8_t* src = img + ((b * g.Hp + ho * g.sh + i * g.dh) * g.Wp + wo * g.sw) * g.Cb;
    if (g.dw == 1) {
      copy_bytes(dst + i * g.KW * g.Cb, src, g.KW * g.Cb);
    } else {
      for (int64_t j = 0; j < g.KW; ++j) copy_bytes(dst + (i * g.KW + j) * g.Cb, src + j * g.dw * g.Cb, g.Cb);
    }
  }
  const int64_t used = g.KH * g.KW * g.Cb;
  std::memset(dst + used, 0, (size_t)(g.kw * 8 - used));
}

// Offsets V + 2 corr (n) of output pixel (ho, wo) and its K map value (sum of A over valid taps / KH KW).
static inline void pixel_terms(const ConvGeom& g, const int32_t* wtap, const float* Ab, int64_t ho, int64_t wo,
                               int32_t* off, float* kval) {
  const int64_t h0 = ho * g.sh - g.ph, w0 = wo * g.sw - g.pw;
  if (h0 >= 0 && h0 + (g.KH - 1) * g.dh < g.H && w0 >= 0 && w0 + (g.KW - 1) * g.dw < g.W) {  // no padding
    const int32_t full = (int32_t)(g.KH * g.KW * g.C);
    for (int64_t n = 0; n < g.N; ++n) off[n] = full;
    float ksum = 0.f;
    if (Ab)
      for (int64_t i = 0; i < g.KH; ++i)
        for (int64_t j = 0; j < g.KW; ++j) ksum += Ab[(h0 + i * g.dh) * g.W + w0 + j * g.dw];
    *kval = Ab ? ksum / (float)(g.KH * g.KW) : 1.f;
    return;
  }
  int64_t nvalid = 0;
  float ksum = 0.f;
  for (int64_t n = 0; n < g.N; ++n) off[n] = 0;
  for (int64_t i = 0; i < g.KH; ++i) {
    const int64_t hi = ho * g.sh - g.ph + i * g.dh;
    for (int64_t j = 0; j < g.KW; ++j) {
      const int64_t wi = wo * g.sw - g.pw + j * g.dw;
      if (hi >= 0 && hi < g.H && wi >= 0 && wi < g.W) {
        ++nvalid;
        if (Ab) ksum += Ab[hi * g.W + wi];
      } else {
        for (int64_t n = 0; n < g.N; ++n) off[n] += 2 * wtap[n * g.KH * g.KW + i * g.KW + j];
      }
    }
  }
  for (int64_t n = 0; n < g.N; ++n) off[n] += (int32_t)(nvalid * g.C);
  *kval = Ab ? ksum / (float)(g.KH * g.KW) : 1.f;
}

// Phase 2, one output row (b, ho): y[b, n, ho, :] = (V + 2 corr - 2 popcount) * scale[n] * K + bias[n].
static void conv_row(const uint8_t* img, const ConvGeom& g, const u64* panels, const int32_t* wtap, const float* A,
                     const float* scale, const float* bias, int64_t b, int64_t ho, u64* rows, int32_t* off,
                     float* kv, float* y) {
  for (int64_t wo = 0; wo < g.Wo; ++wo) {
    gather_row(img, g, b, ho, wo, (uint8_t*)(rows + wo * g.kw));
    pixel_terms(g, wtap, A ? A + b * g.H * g.W : nullptr, ho, wo, off + wo * g.N, kv + wo);
  }
  uint32_t o0[NB], o1[NB];
  const int64_t np = (g.N + NB - 1) / NB, plane = g.Ho * g.Wo;
  for (int64_t p = 0; p < np; ++p) {
    const u64* panel = panels + p * g.kw * NB;
    const int64_t jn = g.N - p * NB < NB ? g.N - p * NB : NB;
    for (int64_t wo = 0; wo < g.Wo; wo += 2) {
      const int64_t w1 = wo + 1 < g.Wo ? wo + 1 : wo;
      popc_rows(rows + wo * g.kw, rows + w1 * g.kw, panel, g.kw, o0, o1);
      for (int64_t j = 0; j < jn; ++j) {
        const int64_t n = p * NB + j;
        const float bn = bias ? bias[n] : 0.f;
        float* yn = y + (b * g.N + n) * plane + ho * g.Wo;
        yn[wo] = (float)(off[wo * g.N + n] - 2 * (int32_t)o0[j]) * scale[n] * kv[wo] + bn;
        if (w1 != wo) yn[w1] = (float)(off[w1 * g.N + n] - 2 * (int32_t)o1[j]) * scale[n] * kv[w1] + bn;
      }
    }
  }
}

// XNOR-Net / BNN convolution, float NCHW in and out: BN (x s + t) -> sign -> packed im2col -> XNOR-popcount
// against the packed +-1 weights (panels of 8 channels, taps in (i, j, c) order) -> * scale (* K) + bias.
// wtap (N, KH KW): popcount of each channel's weight bits per tap (for the padding correction).
extern "C" void effdnn_xnor_conv2d(const float* x, const int64_t* shape, const float* s, const float* t,
                                   const u64* panels, const int32_t* wtap, const float* scale, const float* bias,
                                   int kscale, float* y, int nt) {
  ConvGeom g;
  g.B = shape[0]; g.C = shape[1]; g.H = shape[2]; g.W = shape[3]; g.N = shape[4]; g.kw = shape[5];
  g.KH = shape[6]; g.KW = shape[7]; g.sh = shape[8]; g.sw = shape[9]; g.ph = shape[10]; g.pw = shape[11];
  g.dh = shape[12]; g.dw = shape[13];
  g.Ho = (g.H + 2 * g.ph - g.dh * (g.KH - 1) - 1) / g.sh + 1;
  g.Wo = (g.W + 2 * g.pw - g.dw * (g.KW - 1) - 1) / g.sw + 1;
  g.Hp = g.H + 2 * g.ph; g.Wp = g.W + 2 * g.pw; g.Cb = (g.C + 7) / 8;
  std::vector<uint8_t> img((size_t)(g.B * g.Hp * g.Wp * g.Cb + 8), 0);
  std::vector<float> A(kscale ? (size_t)(g.B * g.H * g.W) : 0);
  pack_image(x, s, t, g, img.data(), kscale ? A.data() : nullptr, nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    std::vector<u64> rows((size_t)((g.Wo + 1) * g.kw + 1), 0);
    std::vector<int32_t> off((size_t)(g.Wo * g.N));
    std::vector<float> kv((size_t)g.Wo);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < g.B * g.Ho; ++bh)
      conv_row(img.data(), g, panels, wtap, kscale ? A.data() : nullptr, scale, bias, bh / g.Ho, bh % g.Ho,
               rows.data(), off.data(), kv.data(), y);
  }
}
