/* snprintf/vsnprintf for the firmware. newlib's (nano included) formats floating point with
 * _dtoa_r, which allocates its big integers with malloc: this small formatter replaces it, so
 * the firmware links without a heap (the linker takes these definitions before libc's).
 *
 * Supports what the runtime uses: flags '-' '0', width, .precision, length h/l/ll/z, and
 * d i u x X c s p g f %. A conversion it does not know is printed as "%?". %g and %f give
 * printf's digits for |x| < 1e19 up to 9 significant digits, which is what the protocol
 * needs (max_abs_error with %.9g); beyond that the last digit may differ from glibc's. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct {
  char* buf;
  size_t cap;
  size_t n; /* characters that would have been written */
} out_t;

static void put(out_t* o, char c) {
  if (o->n + 1 < o->cap) o->buf[o->n] = c;
  o->n++;
}

static void put_padded(out_t* o, const char* s, size_t len, int width, int left, char pad) {
  /* A sign stays in front of zero padding. */
  if (pad == '0' && !left && len && (s[0] == '-' || s[0] == '+')) {
    put(o, *s++);
    len--;
    width--;
  }
  int fill = width > (int)len ? width - (int)len : 0;
  if (!left)
    while (fill-- > 0) put(o, pad);
  while (len--) put(o, *s++);
  if (left)
    while (fill-- > 0) put(o, ' ');
}

static size_t utoa(char* end, uint64_t v, unsigned base, int upper) {
  const char* digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  size_t n = 0;
  do {
    *--end = digits[v % base];
    v /= base;
    n++;
  } while (v);
  return n;
}

/* Decimal digits of x > 0 rounded to `sig` significant digits: returns the decimal
 * exponent of the first digit, writes sig digits. */
static double pow10_exact(int k) { /* 10^k is exact in a double for k <= 22 */
  double p = 1.0;
  while (k-- > 0) p *= 10.0;
  return p;
}

static int digits_of(double x, int sig, char* d) {
  int e = 0;
  double y = x; /* only to find the exponent */
  while (y >= 1e16) { y /= 1e16; e += 16; }
  while (y >= 10.0) { y /= 10.0; e += 1; }
  while (y < 1e-16) { y *= 1e16; e -= 16; }
  while (y < 1.0) { y *= 10.0; e -= 1; }
  /* One rounding only when the scale is an exact power of ten (|k| <= 22). */
  int k = sig - 1 - e;
  double f;
  if (k >= 0 && k <= 22) f = x * pow10_exact(k);
  else if (k < 0 && k >= -22) f = x / pow10_exact(-k);
  else f = y * pow10_exact(sig - 1);
  uint64_t scale = 1;
  for (int i = 1; i < sig; ++i) scale *= 10u;
  if (f < (double)scale) { f *= 10.0; e -= 1; } /* y's estimate was one too high */
  uint64_t m = (uint64_t)f;
  double rest = f - (double)m;
  if (rest > 0.5 || (rest == 0.5 && (m & 1u))) m++; /* printf rounds a tie to even */
  if (m >= scale * 10u) { m = (m + 5u) / 10u; e += 1; }
  for (int i = sig - 1; i >= 0; --i) { d[i] = (char)('0' + m % 10u); m /= 10u; }
  return e;
}

static size_t fmt_g(char* s, double x, int prec) {
  size_t n = 0;
  if (x != x) { s[0] = 'n'; s[1] = 'a'; s[2] = 'n'; return 3; }
  if (x < 0) { s[n++] = '-'; x = -x; }
  if (x > 1.7976931348623157e308) { s[n] = 'i'; s[n + 1] = 'n'; s[n + 2] = 'f'; return n + 3; }
  if (x == 0.0) { s[n++] = '0'; return n; }
  if (prec == 0) prec = 1;
  if (prec > 17) prec = 17;
  char d[17];
  int e = digits_of(x, prec, d);
  int last = prec - 1; /* %g drops trailing zeros */
  while (last > 0 && d[last] == '0') last--;
  if (e < -4 || e >= prec) {
    s[n++] = d[0];
    if (last > 0) { s[n++] = '.'; for (int i = 1; i <= last; ++i) s[n++] = d[i]; }
    s[n++] = 'e';
    s[n++] = e < 0 ? '-' : '+';
    int ae = e < 0 ? -e : e;
    if (ae >= 100) s[n++] = (char)('0' + ae / 100);
    s[n++] = (char)('0' + (ae / 10) % 10);
    s[n++] = (char)('0' + ae % 10);
  } else if (e >= 0) {
    for (int i = 0; i <= e; ++i) s[n++] = d[i];
    if (last > e) { s[n++] = '.'; for (int i = e + 1; i <= last; ++i) s[n++] = d[i]; }
  } else {
    s[n++] = '0';
    s[n++] = '.';
    for (int i = 0; i < -e - 1; ++i) s[n++] = '0';
    for (int i = 0; i <= last; ++i) s[n++] = d[i];
  }
  return n;
}

static size_t fmt_f(char* s, double x, int prec) {
  size_t n = 0;
  if (x != x || x > 1e19 || x < -1e19) return fmt_g(s, x, 9);
  if (x < 0) { s[n++] = '-'; x = -x; }
  if (prec > 9) prec = 9;
  uint64_t scale = 1;
  for (int i = 0; i < prec; ++i) scale *= 10u;
  uint64_t ip = (uint64_t)x;
  uint64_t fp = (uint64_t)((x - (double)ip) * (double)scale + 0.5);
  if (fp >= scale) { ip += 1; fp -= scale; }
  char tmp[24];
  size_t k = utoa(tmp + sizeof tmp, ip, 10, 0);
  for (size_t i = 0; i < k; ++i) s[n++] = tmp[sizeof tmp - k + i];
  if (prec > 0) {
    s[n++] = '.';
    for (int i = prec - 1; i >= 0; --i) { s[n + (size_t)i] = (char)('0' + fp % 10u); fp /= 10u; }
    n += (size_t)prec;
  }
  return n;
}

int vsnprintf(char* buf, size_t cap, const char* fmt, va_list ap) {
  out_t o = {buf, cap, 0};
  for (; *fmt; ++fmt) {
    if (*fmt != '%') { put(&o, *fmt); continue; }
    ++fmt;
    int left = 0, width = 0, prec = -1, lng = 0;
    char pad = ' ';
    for (;; ++fmt) {
      if (*fmt == '-') left = 1;
      else if (*fmt == '0') pad = '0';
      else break;
    }
    if (*fmt == '*') { width = va_arg(ap, int); ++fmt; }
    while (*fmt >= '0' && *fmt <= '9') width = width * 10 + (*fmt++ - '0');
    if (*fmt == '.') {
      prec = 0;
      ++fmt;
      if (*fmt == '*') { prec = va_arg(ap, int); ++fmt; }
      while (*fmt >= '0' && *fmt <= '9') prec = prec * 10 + (*fmt++ - '0');
    }
    while (*fmt == 'l' || *fmt == 'h' || *fmt == 'z') {
      if (*fmt == 'l') lng++;
      if (*fmt == 'z') lng = sizeof(size_t) > 4 ? 2 : 1;
      ++fmt;
    }
    char tmp[48];
    char* end = tmp + sizeof tmp;
    switch (*fmt) {
      case 'd': case 'i': {
        int64_t v = lng >= 2 ? va_arg(ap, long long) : lng ? va_arg(ap, long) : va_arg(ap, int);
        uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
        size_t k = utoa(end, u, 10, 0);
        if (v < 0) { *(end - k - 1) = '-'; k++; }
        put_padded(&o, end - k, k, width, left, pad);
        break;
      }
      case 'u': case 'x': case 'X': {
        uint64_t u = lng >= 2 ? va_arg(ap, unsigned long long)
                   : lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int);
        size_t k = utoa(end, u, *fmt == 'u' ? 10u : 16u, *fmt == 'X');
        put_padded(&o, end - k, k, width, left, pad);
        break;
      }
      case 'p': {
        size_t k = utoa(end, (uintptr_t)va_arg(ap, void*), 16, 0);
        *(end - k - 1) = 'x';
        *(end - k - 2) = '0';
        put_padded(&o, end - k - 2, k + 2, width, left, ' ');
        break;
      }
      case 'c': {
        char c = (char)va_arg(ap, int);
        put_padded(&o, &c, 1, width, left, ' ');
        break;
      }
      case 's': {
        const char* s = va_arg(ap, const char*);
        if (!s) s = "(null)";
        size_t k = 0;
        while (s[k] && (prec < 0 || k < (size_t)prec)) k++;
        put_padded(&o, s, k, width, left, ' ');
        break;
      }
      case 'g': case 'f': {
        double v = va_arg(ap, double);
        size_t k = *fmt == 'g' ? fmt_g(tmp, v, prec < 0 ? 6 : prec) : fmt_f(tmp, v, prec < 0 ? 6 : prec);
        put_padded(&o, tmp, k, width, left, pad);
        break;
      }
      case '%': put(&o, '%'); break;
      case '\0': --fmt; break;
      default: put(&o, '%'); put(&o, '?'); break;
    }
  }
  if (cap) buf[o.n < cap ? o.n : cap - 1] = '\0';
  return (int)o.n;
}

int snprintf(char* buf, size_t cap, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, cap, fmt, ap);
  va_end(ap);
  return n;
}
