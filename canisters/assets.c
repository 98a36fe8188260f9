/*
 * The asset canister: serves files over the HTTP gateway protocol with certified bodies.
 *
 *   canister_query  http_request(HttpRequest) -> HttpResponse
 *   canister_query  http_request_streaming_callback(Token) -> StreamingCallbackHttpResponse
 *   canister_update put(path : text, content_type : text, body : blob) -> ()   controllers only
 *   canister_update put_chunk(path : text, chunk : blob) -> ()                  controllers only
 *   canister_update delete(path : text) -> ()                                  controllers only
 *
 * A body larger than one message is uploaded in pieces: `put_chunk` stages them (one upload
 * at a time; a call for another path starts over), and `put` with the last piece publishes
 * the whole body at once, so no reader ever sees half a file. A body over 1 MiB is answered
 * in 1 MiB chunks: the first with the HttpResponse and a streaming strategy whose token
 * (`record { key : text; index : nat64 }`) names the next, the rest by the callback. The
 * certificate covers the SHA-256 of the whole body, so a gateway checks the chunks together.
 *
 * Every body is certified (response verification version 1): the canister's certified data
 * is the root of the hash tree `http_assets -> <path> -> SHA-256(body)`, and each answer
 * carries `IC-Certificate: certificate=:<subnet certificate>:, tree=:<witness>:`, so a
 * gateway can check the body it got against the subnet's signature. A path with no asset is
 * answered with /index.html (single-page applications route in the browser), which the
 * verifier's own fallback rule accepts; with no /index.html it is a 404 that no gateway
 * will serve as verified.
 *
 * State lives in stable memory (written through on every change), so it survives code
 * upgrades with no pre_upgrade work: page 0 holds the header and the asset table, bodies
 * follow from 64 KiB. The heap only holds a copy of the table and per-message scratch.
 *
 * Built with clang's wasm32 target and no C library (see crates/example-canisters/build.rs).
 * Everything that comes from outside (Candid arguments, paths, content types) is checked
 * and refused with a message that says what was wrong.
 */

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;
typedef unsigned long usize;

#define IC0(name) __attribute__((import_module("ic0"), import_name(name)))
#define EXPORT(name) __attribute__((export_name(name)))

IC0("msg_arg_data_size") u32 ic0_msg_arg_data_size(void);
IC0("msg_arg_data_copy") void ic0_msg_arg_data_copy(void *dst, u32 offset, u32 size);
IC0("msg_caller_size") u32 ic0_msg_caller_size(void);
IC0("msg_caller_copy") void ic0_msg_caller_copy(void *dst, u32 offset, u32 size);
IC0("msg_reply_data_append") void ic0_msg_reply_data_append(const void *src, u32 size);
IC0("msg_reply") void ic0_msg_reply(void);
IC0("trap") __attribute__((noreturn)) void ic0_trap(const void *src, u32 size);
IC0("is_controller") u32 ic0_is_controller(const void *src, u32 size);
IC0("certified_data_set") void ic0_certified_data_set(const void *src, u32 size);
IC0("data_certificate_present") u32 ic0_data_certificate_present(void);
IC0("data_certificate_size") u32 ic0_data_certificate_size(void);
IC0("data_certificate_copy") void ic0_data_certificate_copy(void *dst, u32 offset, u32 size);
IC0("stable64_size") u64 ic0_stable64_size(void);
IC0("stable64_grow") i64 ic0_stable64_grow(u64 pages);
IC0("stable64_read") void ic0_stable64_read(u64 dst, u64 offset, u64 size);
IC0("stable64_write") void ic0_stable64_write(u64 offset, u64 src, u64 size);
IC0("canister_self_size") u32 ic0_canister_self_size(void);
IC0("canister_self_copy") void ic0_canister_self_copy(void *dst, u32 offset, u32 size);

#define MAX_ASSETS 64
#define MAX_PATH 255
#define MAX_CONTENT_TYPE 95
#define MAX_BODY (64ULL * 1024 * 1024)
#define CHUNK (1024 * 1024) /* bytes per answer: the IC's reply limit is 2 MiB */
#define MAX_PIECE (1024 * 1024) /* bytes per put or put_chunk: hashing them fits one message */
#define MAX_DEPTH 32
#define PAGE 65536ULL
#define BODIES_START PAGE

/* ---- the C library this canister needs (clang emits calls to these) ---- */

void *memcpy(void *dst, const void *src, usize n) {
  u8 *d = dst;
  const u8 *s = src;
  while (n--) *d++ = *s++;
  return dst;
}

void *memmove(void *dst, const void *src, usize n) {
  u8 *d = dst;
  const u8 *s = src;
  if (d < s) return memcpy(dst, src, n);
  while (n--) d[n] = s[n];
  return dst;
}

void *memset(void *dst, int c, usize n) {
  u8 *d = dst;
  while (n--) *d++ = (u8)c;
  return dst;
}

static int compare(const u8 *a, u32 alen, const u8 *b, u32 blen) {
  u32 n = alen < blen ? alen : blen;
  for (u32 i = 0; i < n; i++)
    if (a[i] != b[i]) return a[i] < b[i] ? -1 : 1;
  return alen == blen ? 0 : (alen < blen ? -1 : 1);
}

static u32 cstrlen(const char *s) {
  u32 n = 0;
  while (s[n]) n++;
  return n;
}

/* ---- per-message scratch memory: reset at every entry point ---- */

extern u8 __heap_base;
static u8 *heap_top;

static void begin_message(void) { heap_top = &__heap_base; }

__attribute__((noreturn)) static void fail(const char *what);

static void *scratch(u32 n) {
  u8 *p = heap_top;
  usize end = (usize)p + ((n + 7) & ~7u);
  usize have = __builtin_wasm_memory_size(0) * PAGE;
  if (end > have) {
    usize pages = (end - have + PAGE - 1) / PAGE;
    if (__builtin_wasm_memory_grow(0, pages) == (usize)-1) fail("the canister is out of heap memory");
  }
  heap_top = (u8 *)end;
  return p;
}

/* ---- errors: a message built from parts, then ic0.trap ---- */

static char message[512];
static u32 message_len;

static void say(const char *s, u32 n) {
  for (u32 i = 0; i < n && message_len < sizeof message; i++) message[message_len++] = s[i];
}

__attribute__((noreturn)) static void fail(const char *what) {
  say(what, cstrlen(what));
  ic0_trap(message, message_len);
}

/* Starts an error message that names the method, e.g. "put: ". */
static void in_method(const char *method) {
  message_len = 0;
  say(method, cstrlen(method));
  say(": ", 2);
}

/* ---- SHA-256 (FIPS 180-4) ---- */

typedef struct {
  u32 h[8];
  u8 block[64];
  u32 used;
  u64 total;
} sha256;

static const u32 K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static u32 rotr(u32 x, u32 n) { return (x >> n) | (x << (32 - n)); }

static void sha256_block(sha256 *s, const u8 *b) {
  u32 w[64];
  for (int i = 0; i < 16; i++)
    w[i] = (u32)b[4 * i] << 24 | (u32)b[4 * i + 1] << 16 | (u32)b[4 * i + 2] << 8 | b[4 * i + 3];
  for (int i = 16; i < 64; i++) {
    u32 s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
    u32 s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  u32 a = s->h[0], b2 = s->h[1], c = s->h[2], d = s->h[3];
  u32 e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
  for (int i = 0; i < 64; i++) {
    u32 t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
    u32 t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b2) ^ (a & c) ^ (b2 & c));
    h = g, g = f, f = e, e = d + t1, d = c, c = b2, b2 = a, a = t1 + t2;
  }
  s->h[0] += a, s->h[1] += b2, s->h[2] += c, s->h[3] += d;
  s->h[4] += e, s->h[5] += f, s->h[6] += g, s->h[7] += h;
}

static void sha256_init(sha256 *s) {
  static const u32 iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                            0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  memcpy(s->h, iv, sizeof iv);
  s->used = 0;
  s->total = 0;
}

static void sha256_add(sha256 *s, const void *data, u32 n) {
  const u8 *p = data;
  s->total += n;
  while (n--) {
    s->block[s->used++] = *p++;
    if (s->used == 64) sha256_block(s, s->block), s->used = 0;
  }
}

static void sha256_done(sha256 *s, u8 out[32]) {
  u64 bits = s->total * 8;
  u8 pad = 0x80;
  sha256_add(s, &pad, 1);
  pad = 0;
  while (s->used != 56) sha256_add(s, &pad, 1);
  u8 len[8];
  for (int i = 0; i < 8; i++) len[i] = (u8)(bits >> (56 - 8 * i));
  sha256_add(s, len, 8);
  for (int i = 0; i < 8; i++)
    for (int j = 0; j < 4; j++) out[4 * i + j] = (u8)(s->h[i] >> (24 - 8 * j));
}

/* ---- the asset table: a heap copy of what stable memory holds ---- */

typedef struct {
  u64 body_offset; /* in stable memory */
  u64 body_len;
  u64 body_capacity; /* a replacement no longer than this is written in place */
  u8 sha[32];        /* SHA-256 of the body: the certified leaf */
  u16 path_len;
  u16 content_type_len;
  u8 path[MAX_PATH + 1];
  u8 content_type[MAX_CONTENT_TYPE + 1];
} asset;

typedef struct {
  u8 magic[8];
  u32 count;
  u32 reserved;
  u64 bodies_end; /* first free byte after the last body */
} table_header;

#define TABLE_OFFSET 64ULL
static const u8 MAGIC[8] = {'I', 'C', 'O', 'S', 'A', 'S', 'T', '1'};

static table_header header;
static asset assets[MAX_ASSETS];
static u8 root_hash[32];

/* The upload in progress (`put_chunk`): its pieces are staged at the end of the bodies and
 * hashed as they come; `put` publishes them. Kept in page 0 after the table (zeros, as a
 * canister installed before chunked uploads has there, mean none). */
typedef struct {
  u64 len;    /* bytes staged; 0: no upload in progress */
  u64 offset; /* where they start in stable memory */
  sha256 hash;
  u16 path_len;
  u8 path[MAX_PATH + 1];
} pending_upload;

#define PENDING_OFFSET 49152ULL
static pending_upload pending;

_Static_assert(TABLE_OFFSET + sizeof assets <= PENDING_OFFSET, "the asset table fits in page 0");
_Static_assert(PENDING_OFFSET + sizeof(pending_upload) <= BODIES_START, "the upload fits in page 0");

static void stable_ensure(u64 end) {
  u64 have = ic0_stable64_size() * PAGE;
  if (end <= have) return;
  if (ic0_stable64_grow((end - have + PAGE - 1) / PAGE) < 0) fail("stable memory could not grow");
}

static void save_table(void) {
  ic0_stable64_write(0, (u64)(usize)&header, sizeof header);
  ic0_stable64_write(TABLE_OFFSET, (u64)(usize)assets, sizeof(asset) * header.count);
}

static void save_pending(void) {
  ic0_stable64_write(PENDING_OFFSET, (u64)(usize)&pending, sizeof pending);
}

static void load_table(void) {
  stable_ensure(BODIES_START);
  ic0_stable64_read((u64)(usize)&header, 0, sizeof header);
  if (compare(header.magic, 8, MAGIC, 8) != 0) fail("stable memory holds no asset table");
  if (header.count > MAX_ASSETS) fail("the asset table in stable memory is damaged");
  ic0_stable64_read((u64)(usize)assets, TABLE_OFFSET, sizeof(asset) * header.count);
  ic0_stable64_read((u64)(usize)&pending, PENDING_OFFSET, sizeof pending);
  if (pending.path_len > MAX_PATH || pending.offset + pending.len > ic0_stable64_size() * PAGE)
    pending.len = 0; /* damaged: the upload starts over */
}

/* The index of `path`, or -1 - (where it would be inserted): the table is sorted by path,
 * the order of labels in the hash tree. */
static int find(const u8 *path, u32 len) {
  int lo = 0, hi = (int)header.count;
  while (lo < hi) {
    int mid = (lo + hi) / 2;
    int c = compare(assets[mid].path, assets[mid].path_len, path, len);
    if (c == 0) return mid;
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return -1 - lo;
}

/* ---- the hash tree (the Internet Computer's domain-separated hashing) ---- */

static void hash_leaf(const u8 *value, u32 n, u8 out[32]) {
  sha256 s;
  sha256_init(&s);
  sha256_add(&s, "\x10ic-hashtree-leaf", 17);
  sha256_add(&s, value, n);
  sha256_done(&s, out);
}

static void hash_labeled(const u8 *label, u32 n, const u8 sub[32], u8 out[32]) {
  sha256 s;
  sha256_init(&s);
  sha256_add(&s, "\x13ic-hashtree-labeled", 20);
  sha256_add(&s, label, n);
  sha256_add(&s, sub, 32);
  sha256_done(&s, out);
}

static void hash_fork(const u8 l[32], const u8 r[32], u8 out[32]) {
  sha256 s;
  sha256_init(&s);
  sha256_add(&s, "\x10ic-hashtree-fork", 17);
  sha256_add(&s, l, 32);
  sha256_add(&s, r, 32);
  sha256_done(&s, out);
}

static void hash_empty(u8 out[32]) {
  sha256 s;
  sha256_init(&s);
  sha256_add(&s, "\x11ic-hashtree-empty", 18);
  sha256_done(&s, out);
}

/* Assets [lo, hi) as a balanced tree of forks over labeled leaves. */
static void hash_assets(u32 lo, u32 hi, u8 out[32]) {
  if (hi - lo == 1) {
    u8 leaf[32];
    hash_leaf(assets[lo].sha, 32, leaf);
    hash_labeled(assets[lo].path, assets[lo].path_len, leaf, out);
    return;
  }
  u8 l[32], r[32];
  u32 mid = lo + (hi - lo) / 2;
  hash_assets(lo, mid, l);
  hash_assets(mid, hi, r);
  hash_fork(l, r, out);
}

static void certify(void) {
  u8 sub[32];
  if (header.count == 0) hash_empty(sub);
  else hash_assets(0, header.count, sub);
  hash_labeled((const u8 *)"http_assets", 11, sub, root_hash);
  ic0_certified_data_set(root_hash, 32);
}

/* ---- CBOR, for the witness ---- */

typedef struct {
  u8 *p;
  u32 len, cap;
} buf;

static void put_bytes(buf *b, const void *src, u32 n) {
  if (b->len + n > b->cap) fail("an answer outgrew its buffer");
  memcpy(b->p + b->len, src, n);
  b->len += n;
}

static void put_byte(buf *b, u8 v) { put_bytes(b, &v, 1); }

static void cbor_blob(buf *b, const u8 *src, u32 n) {
  if (n < 24) put_byte(b, 0x40 | (u8)n);
  else if (n < 256) put_byte(b, 0x58), put_byte(b, (u8)n);
  else put_byte(b, 0x59), put_byte(b, (u8)(n >> 8)), put_byte(b, (u8)n);
  put_bytes(b, src, n);
}

/* The witness for asset `k` over assets [lo, hi): its path and leaf revealed, every other
 * subtree pruned to its hash. */
static void witness_assets(buf *b, u32 lo, u32 hi, u32 k) {
  if (k < lo || k >= hi) {
    u8 h[32];
    hash_assets(lo, hi, h);
    put_byte(b, 0x82), put_byte(b, 0x04), cbor_blob(b, h, 32);
    return;
  }
  if (hi - lo == 1) {
    put_byte(b, 0x83), put_byte(b, 0x02), cbor_blob(b, assets[k].path, assets[k].path_len);
    put_byte(b, 0x82), put_byte(b, 0x03), cbor_blob(b, assets[k].sha, 32);
    return;
  }
  u32 mid = lo + (hi - lo) / 2;
  put_byte(b, 0x83), put_byte(b, 0x01);
  witness_assets(b, lo, mid, k);
  witness_assets(b, mid, hi, k);
}

static void witness(buf *b, u32 k) {
  static const u8 self_describe[3] = {0xd9, 0xd9, 0xf7};
  put_bytes(b, self_describe, 3);
  put_byte(b, 0x83), put_byte(b, 0x02), cbor_blob(b, (const u8 *)"http_assets", 11);
  witness_assets(b, 0, header.count, k);
}

static void base64(buf *b, const u8 *src, u32 n) {
  static const char A[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  for (u32 i = 0; i < n; i += 3) {
    u32 v = (u32)src[i] << 16 | (i + 1 < n ? (u32)src[i + 1] << 8 : 0) | (i + 2 < n ? src[i + 2] : 0);
    put_byte(b, (u8)A[v >> 18 & 63]);
    put_byte(b, (u8)A[v >> 12 & 63]);
    put_byte(b, i + 1 < n ? (u8)A[v >> 6 & 63] : '=');
    put_byte(b, i + 2 < n ? (u8)A[v & 63] : '=');
  }
}

/* ---- Candid: reading arguments ---- */

/* Candid's type opcodes (negative SLEB128 values). */
enum {
  T_NULL = -1, T_BOOL = -2, T_NAT = -3, T_INT = -4, T_NAT8 = -5, T_NAT16 = -6, T_NAT32 = -7,
  T_NAT64 = -8, T_INT8 = -9, T_INT16 = -10, T_INT32 = -11, T_INT64 = -12, T_FLOAT32 = -13,
  T_FLOAT64 = -14, T_TEXT = -15, T_RESERVED = -16, T_EMPTY = -17, T_OPT = -18, T_VEC = -19,
  T_RECORD = -20, T_VARIANT = -21, T_PRINCIPAL = -24
};

#define MAX_TYPES 64

typedef struct {
  const u8 *p, *end;
  u32 ntypes;
  const u8 *types[MAX_TYPES]; /* where each table entry starts */
} candid;

static u8 next(candid *c) {
  if (c->p >= c->end) fail("the Candid argument ends too early");
  return *c->p++;
}

static u64 uleb(candid *c) {
  u64 v = 0;
  for (u32 shift = 0; shift < 64; shift += 7) {
    u8 b = next(c);
    v |= (u64)(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
  fail("a Candid number is too long");
}

static i64 sleb(candid *c) {
  i64 v = 0;
  u32 shift = 0;
  u8 b;
  do {
    if (shift >= 64) fail("a Candid number is too long");
    b = next(c);
    v |= (i64)(b & 0x7f) << shift;
    shift += 7;
  } while (b & 0x80);
  if (shift < 64 && (b & 0x40)) v |= -((i64)1 << shift);
  return v;
}

static void skip(candid *c, u64 n) {
  if (n > (u64)(c->end - c->p)) fail("the Candid argument ends too early");
  c->p += n;
}

static i64 type_ref(candid *c) {
  i64 t = sleb(c);
  if (t >= 0 && (u64)t >= c->ntypes) fail("a Candid type refers past the type table");
  return t;
}

/* Reads the type table; checks its shape, not its values. */
static void read_types(candid *c) {
  if (c->end - c->p < 4 || compare(c->p, 4, (const u8 *)"DIDL", 4) != 0)
    fail("the argument is not Candid (no DIDL magic)");
  c->p += 4;
  u64 n = uleb(c);
  if (n > MAX_TYPES) fail("the Candid type table is too long");
  c->ntypes = (u32)n;
  for (u32 i = 0; i < c->ntypes; i++) {
    c->types[i] = c->p;
    i64 op = sleb(c);
    if (op == T_OPT || op == T_VEC) {
      type_ref(c);
    } else if (op == T_RECORD || op == T_VARIANT) {
      u64 fields = uleb(c);
      for (u64 f = 0; f < fields; f++) uleb(c), type_ref(c);
    } else {
      fail("the Candid type table has a type this canister does not take (func or service)");
    }
  }
}

/* The opcode of type `t`, following table references. */
static i64 opcode(candid *c, i64 t, candid *at) {
  if (t < 0) return t;
  *at = *c;
  at->p = c->types[t];
  return sleb(at);
}

static void skip_value(candid *c, i64 t, u32 depth);

static void skip_fields(candid *c, candid *def, int variant, u32 depth) {
  u64 fields = uleb(def);
  if (variant) {
    u64 index = uleb(c);
    if (index >= fields) fail("a Candid variant index is out of range");
    for (u64 f = 0; f <= index; f++) {
      uleb(def);
      i64 ft = type_ref(def);
      if (f == index) skip_value(c, ft, depth + 1);
    }
    return;
  }
  for (u64 f = 0; f < fields; f++) {
    uleb(def);
    skip_value(c, type_ref(def), depth + 1);
  }
}

static void skip_value(candid *c, i64 t, u32 depth) {
  if (depth > MAX_DEPTH) fail("the Candid value is nested too deeply");
  candid def;
  switch (opcode(c, t, &def)) {
  case T_NULL: case T_RESERVED: return;
  case T_BOOL: case T_NAT8: case T_INT8: skip(c, 1); return;
  case T_NAT16: case T_INT16: skip(c, 2); return;
  case T_NAT32: case T_INT32: case T_FLOAT32: skip(c, 4); return;
  case T_NAT64: case T_INT64: case T_FLOAT64: skip(c, 8); return;
  case T_NAT: uleb(c); return;
  case T_INT: sleb(c); return;
  case T_TEXT: skip(c, uleb(c)); return;
  case T_PRINCIPAL:
    if (next(c) != 1) fail("an opaque Candid principal reference");
    skip(c, uleb(c));
    return;
  case T_OPT:
    if (next(c)) skip_value(c, type_ref(&def), depth + 1);
    return;
  case T_VEC: {
    i64 elem = type_ref(&def);
    u64 n = uleb(c);
    if (elem == T_NAT8) { skip(c, n); return; }
    if (n > (u64)(c->end - c->p) + 1) fail("a Candid vector is longer than the argument");
    for (u64 i = 0; i < n; i++) skip_value(c, elem, depth + 1);
    return;
  }
  case T_RECORD: skip_fields(c, &def, 0, depth); return;
  case T_VARIANT: skip_fields(c, &def, 1, depth); return;
  default: fail("a Candid value of a type this canister does not take");
  }
}

/* A `text`, or a `blob` (vec nat8) where blob_ok. */
static const u8 *read_bytes(candid *c, i64 t, int blob_ok, u32 *len) {
  candid def;
  i64 op = opcode(c, t, &def);
  int ok = op == T_TEXT || (blob_ok && op == T_VEC && type_ref(&def) == T_NAT8);
  if (!ok) fail(blob_ok ? "expected a blob" : "expected a text");
  u64 n = uleb(c);
  if (n > (u64)(c->end - c->p)) fail("the Candid argument ends too early");
  *len = (u32)n;
  const u8 *p = c->p;
  c->p += n;
  return p;
}

/* Copies the argument into scratch memory and reads its header: the type table and the
 * argument count, which must be `want`. The argument types follow at c->p. */
static void read_argument(candid *c, u32 want) {
  u32 n = ic0_msg_arg_data_size();
  u8 *p = scratch(n);
  ic0_msg_arg_data_copy(p, 0, n);
  c->p = p;
  c->end = p + n;
  read_types(c);
  if (uleb(c) != want) fail(want == 1 ? "expected one argument" : "expected a different number of arguments");
}

/* ---- Candid: writing answers ---- */

static void put_uleb(buf *b, u64 v) {
  do {
    u8 byte = v & 0x7f;
    v >>= 7;
    put_byte(b, byte | (v ? 0x80 : 0));
  } while (v);
}

static void reply_empty(void) {
  ic0_msg_reply_data_append("DIDL\0\0", 6);
  ic0_msg_reply();
}

/* ---- checks on what callers send ---- */

static void check_controller(void) {
  u32 n = ic0_msg_caller_size();
  u8 *caller = scratch(n);
  ic0_msg_caller_copy(caller, 0, n);
  if (!ic0_is_controller(caller, n)) fail("only a controller of this canister may change its assets");
}

static void check_path(const u8 *p, u32 n) {
  if (n == 0 || p[0] != '/') fail("an asset path must start with '/'");
  if (n > MAX_PATH) fail("an asset path is at most 255 bytes");
  for (u32 i = 0; i < n; i++)
    if (p[i] < 0x20 || p[i] == 0x7f || p[i] == '?' || p[i] == '#')
      fail("an asset path may not hold control characters, '?' or '#'");
}

/* A content type goes into a response header as it is: no control characters, so no
 * header can be injected through it. */
static void check_content_type(const u8 *p, u32 n) {
  if (n == 0 || n > MAX_CONTENT_TYPE) fail("a content type is 1 to 95 bytes");
  for (u32 i = 0; i < n; i++)
    if (p[i] < 0x20 || p[i] > 0x7e) fail("a content type may only hold printable ASCII");
}

/* ---- changing assets ---- */

/* The table entry for `path`, made (empty) if there is none. */
static asset *entry(const u8 *path, u32 path_len) {
  int i = find(path, path_len);
  if (i >= 0) return &assets[i];
  if (header.count == MAX_ASSETS) fail("the canister holds 64 assets already");
  i = -1 - i;
  memmove(&assets[i + 1], &assets[i], sizeof(asset) * (header.count - (u32)i));
  header.count++;
  memset(&assets[i], 0, sizeof(asset));
  memcpy(assets[i].path, path, path_len);
  assets[i].path_len = (u16)path_len;
  return &assets[i];
}

static int pending_for(const u8 *path, u32 path_len) {
  return pending.len > 0 && compare(pending.path, pending.path_len, path, path_len) == 0;
}

/* Stage `chunk` as the next piece of `path`'s upload (a new upload when none is in progress
 * for this path: one for another path is dropped). */
static void stage(const u8 *path, u32 path_len, const u8 *chunk, u32 n) {
  if (n > MAX_PIECE) fail("a piece is at most 1 MiB (send larger files in pieces with put_chunk)");
  if (!pending_for(path, path_len)) {
    pending.len = 0;
    pending.offset = header.bodies_end;
    sha256_init(&pending.hash);
    memcpy(pending.path, path, path_len);
    pending.path_len = (u16)path_len;
  }
  if (pending.len + n > MAX_BODY) fail("an asset body is at most 64 MiB");
  stable_ensure(pending.offset + pending.len + n);
  ic0_stable64_write(pending.offset + pending.len, (u64)(usize)chunk, n);
  sha256_add(&pending.hash, chunk, n);
  pending.len += n;
  save_pending();
}

/* Publish `path` with `body` (after the staged pieces, when an upload for it is in
 * progress): the table and the certified tree change in one message. */
static void store(const u8 *path, u32 path_len, const u8 *type, u32 type_len, const u8 *body,
                  u32 body_len) {
  if (pending_for(path, path_len)) {
    stage(path, path_len, body, body_len);
    asset *a = entry(path, path_len);
    a->body_offset = pending.offset;
    a->body_len = a->body_capacity = pending.len;
    sha256_done(&pending.hash, a->sha);
    header.bodies_end = pending.offset + pending.len;
  } else {
    if (body_len > MAX_PIECE) fail("a body in one put is at most 1 MiB (send larger files in pieces with put_chunk)");
    asset *a = entry(path, path_len);
    /* A new body goes where no staged upload lies: that upload is dropped. */
    if (body_len > a->body_capacity) {
      a->body_offset = header.bodies_end;
      a->body_capacity = body_len;
      header.bodies_end += body_len;
      stable_ensure(header.bodies_end);
    }
    ic0_stable64_write(a->body_offset, (u64)(usize)body, body_len);
    a->body_len = body_len;
    sha256 s;
    sha256_init(&s);
    sha256_add(&s, body, body_len);
    sha256_done(&s, a->sha);
  }
  asset *a = entry(path, path_len);
  memcpy(a->content_type, type, type_len);
  a->content_type_len = (u16)type_len;
  pending.len = 0;
  save_pending();
  save_table();
  certify();
}

static const char INDEX[] =
    "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>icos asset canister</title></head>\n"
    "<body>\n<h1>Hello from an icos canister</h1>\n"
    "<p>This page was served by a canister and its body is certified by the subnet.</p>\n"
    "</body>\n</html>\n";

EXPORT("canister_init") void canister_init(void) {
  begin_message();
  in_method("init");
  memcpy(header.magic, MAGIC, 8);
  header.count = 0;
  header.bodies_end = BODIES_START;
  stable_ensure(BODIES_START);
  static const char type[] = "text/html; charset=utf-8";
  store((const u8 *)"/index.html", 11, (const u8 *)type, sizeof type - 1, (const u8 *)INDEX,
        sizeof INDEX - 1);
}

EXPORT("canister_post_upgrade") void canister_post_upgrade(void) {
  begin_message();
  in_method("post_upgrade");
  load_table();
  certify();
}

EXPORT("canister_update put") void put(void) {
  begin_message();
  in_method("put");
  check_controller();
  candid c;
  read_argument(&c, 3);
  i64 t_path = type_ref(&c), t_type = type_ref(&c), t_body = type_ref(&c);
  u32 path_len, type_len, body_len;
  const u8 *path = read_bytes(&c, t_path, 0, &path_len);
  const u8 *type = read_bytes(&c, t_type, 0, &type_len);
  const u8 *body = read_bytes(&c, t_body, 1, &body_len);
  check_path(path, path_len);
  check_content_type(type, type_len);
  store(path, path_len, type, type_len, body, body_len);
  reply_empty();
}

EXPORT("canister_update put_chunk") void put_chunk(void) {
  begin_message();
  in_method("put_chunk");
  check_controller();
  candid c;
  read_argument(&c, 2);
  i64 t_path = type_ref(&c), t_chunk = type_ref(&c);
  u32 path_len, chunk_len;
  const u8 *path = read_bytes(&c, t_path, 0, &path_len);
  const u8 *chunk = read_bytes(&c, t_chunk, 1, &chunk_len);
  check_path(path, path_len);
  stage(path, path_len, chunk, chunk_len);
  reply_empty();
}

EXPORT("canister_update delete") void delete(void) {
  begin_message();
  in_method("delete");
  check_controller();
  candid c;
  read_argument(&c, 1);
  u32 path_len;
  const u8 *path = read_bytes(&c, type_ref(&c), 0, &path_len);
  int i = find(path, path_len);
  if (i < 0) fail("no asset has this path");
  header.count--;
  memmove(&assets[i], &assets[i + 1], sizeof(asset) * (header.count - (u32)i));
  save_table();
  certify();
  reply_empty();
}

/* ---- serving ---- */

/* Field ids of HttpRequest/HttpResponse: Candid's hash of each name. */
#define FIELD_URL 5843823u
#define FIELD_BODY 1092319906u
#define FIELD_HEADERS 1661489734u
#define FIELD_STATUS_CODE 3475804314u

static int hex(u8 c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* The path of a request URL, percent-decoded, without query or fragment, as the verifier
 * reads it. */
static u8 *url_path(const u8 *url, u32 n, u32 *len) {
  u8 *out = scratch(n + 1);
  u32 o = 0;
  for (u32 i = 0; i < n && url[i] != '?' && url[i] != '#'; i++) {
    if (url[i] == '%' && i + 2 < n && hex(url[i + 1]) >= 0 && hex(url[i + 2]) >= 0) {
      out[o++] = (u8)(hex(url[i + 1]) << 4 | hex(url[i + 2]));
      i += 2;
    } else {
      out[o++] = url[i];
    }
  }
  *len = o;
  return out;
}

/* The `url` field of the HttpRequest record; every other field is skipped. */
static const u8 *request_url(u32 *len) {
  candid c;
  read_argument(&c, 1);
  i64 t = type_ref(&c);
  candid def;
  if (opcode(&c, t, &def) != T_RECORD) fail("expected an HttpRequest record");
  const u8 *url = 0;
  u64 fields = uleb(&def);
  for (u64 f = 0; f < fields; f++) {
    u64 id = uleb(&def);
    i64 ft = type_ref(&def);
    if (id == FIELD_URL) url = read_bytes(&c, ft, 0, len);
    else skip_value(&c, ft, 1);
  }
  if (!url) fail("the HttpRequest has no url");
  return url;
}

static void append_text(buf *b, const void *s, u32 n) {
  put_uleb(b, n);
  put_bytes(b, s, n);
}

/* The IC-Certificate header's value for asset k: the subnet's certificate over our
 * certified data, and the witness for k. */
static void certificate_header(buf *b, u32 k) {
  if (!ic0_data_certificate_present()) fail("no data certificate (was this called as an update?)");
  u32 cert_len = ic0_data_certificate_size();
  u8 *cert = scratch(cert_len);
  ic0_data_certificate_copy(cert, 0, cert_len);
  buf tree = {scratch(8192), 0, 8192};
  witness(&tree, k);
  put_bytes(b, "certificate=:", 13);
  base64(b, cert, cert_len);
  put_bytes(b, ":, tree=:", 9);
  base64(b, tree.p, tree.len);
  put_byte(b, ':');
}

/* The types of an HttpResponse and of its streaming strategy, shared by both answers:
 *   0: record { body : 1; headers : 2; streaming_strategy : 4; status_code : nat16 }
 *   1: blob   2: vec 3   3: record { text; text }   4: opt 5
 *   5: variant { Callback : 6 }   6: record { token : 7; callback : 8 }
 *   7: record { key : text; index : nat64 }   (the token)
 *   8: func (7) -> (9) query
 *   9: record { token : 10; body : 1 }   (StreamingCallbackHttpResponse)   10: opt 7
 * Fields are listed in the order of their ids (Candid's hash of each name). */
static const u8 TYPES[] = {
    'D', 'I', 'D', 'L', 11,
    0x6c, 4,
    0xa2, 0xf5, 0xed, 0x88, 0x04, 1,         /* body */
    0xc6, 0xa4, 0xa1, 0x98, 0x06, 2,         /* headers */
    0xb0, 0x96, 0x99, 0xe2, 0x0c, 4,         /* streaming_strategy */
    0x9a, 0xa1, 0xb2, 0xf9, 0x0c, 0x7a,      /* status_code : nat16 */
    0x6d, 0x7b,
    0x6d, 3,
    0x6c, 2, 0, 0x71, 1, 0x71,
    0x6e, 5,
    0x6b, 1, 0xe5, 0xab, 0xe1, 0xc5, 0x05, 6, /* Callback */
    0x6c, 2,
    0xf9, 0x85, 0xae, 0xa1, 0x01, 7,         /* token */
    0xc5, 0xb3, 0x9a, 0xf8, 0x07, 8,         /* callback */
    0x6c, 2,
    0x9f, 0x93, 0xc6, 0x02, 0x71,            /* key : text */
    0x92, 0xb6, 0xd2, 0xf0, 0x0b, 0x78,      /* index : nat64 */
    0x6a, 1, 7, 1, 9, 1, 1,                  /* func (7) -> (9) query */
    0x6c, 2,
    0xf9, 0x85, 0xae, 0xa1, 0x01, 10,        /* token */
    0xa2, 0xf5, 0xed, 0x88, 0x04, 1,         /* body */
    0x6e, 7};

/* Appends the bytes [from, from + n) of asset k's body, read from stable memory. */
static void reply_body(const asset *a, u64 from, u32 n) {
  u8 *p = scratch(n);
  ic0_stable64_read((u64)(usize)p, a->body_offset + from, n);
  ic0_msg_reply_data_append(p, n);
}

/* The token naming chunk `index` of asset k. */
static void put_token(buf *b, const asset *a, u64 index) {
  append_text(b, a->path, a->path_len);
  for (int i = 0; i < 8; i++) put_byte(b, (u8)(index >> (8 * i)));
}

/* Writes the HttpResponse. Without an asset (k < 0) the body is `text`; with one, its first
 * chunk is read from stable memory, a streaming strategy names the next when there is more,
 * and the certificate header covers the whole body. */
static void reply_http(u16 status, const u8 *type, u32 type_len, int k, const u8 *text,
                       u32 text_len) {
  u32 cap = 16384 + 4 * (type_len + 8192);
  buf b = {scratch(cap), 0, cap};
  put_bytes(&b, TYPES, sizeof TYPES);
  put_uleb(&b, 1), put_uleb(&b, 0); /* one value, of type 0 */
  const asset *a = k >= 0 ? &assets[k] : 0;
  u32 first = a ? (a->body_len > CHUNK ? CHUNK : (u32)a->body_len) : text_len;
  put_uleb(&b, first);
  ic0_msg_reply_data_append(b.p, b.len);
  if (a) reply_body(a, 0, first);
  else ic0_msg_reply_data_append(text, text_len);
  b.len = 0;
  put_uleb(&b, a ? 2 : 1);
  append_text(&b, "content-type", 12);
  append_text(&b, type, type_len);
  if (a) {
    append_text(&b, "ic-certificate", 14);
    buf value = {scratch(cap), 0, cap};
    certificate_header(&value, (u32)k);
    append_text(&b, value.p, value.len);
  }
  if (a && a->body_len > CHUNK) {
    put_byte(&b, 1); /* some */
    put_uleb(&b, 0); /* Callback */
    put_token(&b, a, 1);
    u32 n = ic0_canister_self_size();
    u8 *self = scratch(n);
    ic0_canister_self_copy(self, 0, n);
    put_byte(&b, 1), put_byte(&b, 1); /* a public method of an identified service */
    put_uleb(&b, n);
    put_bytes(&b, self, n);
    append_text(&b, "http_request_streaming_callback", 31);
  } else {
    put_byte(&b, 0); /* none */
  }
  put_byte(&b, (u8)status);
  put_byte(&b, (u8)(status >> 8));
  ic0_msg_reply_data_append(b.p, b.len);
  ic0_msg_reply();
}

EXPORT("canister_query http_request") void http_request(void) {
  begin_message();
  in_method("http_request");
  u32 url_len, path_len;
  const u8 *url = request_url(&url_len);
  const u8 *path = url_path(url, url_len, &path_len);
  int k = find(path, path_len);
  if (k < 0) k = find((const u8 *)"/index.html", 11);
  if (k < 0) {
    static const char text[] = "text/plain; charset=utf-8";
    static const char none[] = "no asset has this path, and there is no /index.html\n";
    reply_http(404, (const u8 *)text, sizeof text - 1, -1, (const u8 *)none, sizeof none - 1);
    return;
  }
  reply_http(200, assets[k].content_type, assets[k].content_type_len, k, 0, 0);
}

#define FIELD_KEY 5343647u
#define FIELD_INDEX 3189021458u

/* The chunk a token names: its asset's path (key) and the chunk's number (index). */
EXPORT("canister_query http_request_streaming_callback") void http_request_streaming_callback(void) {
  begin_message();
  in_method("http_request_streaming_callback");
  candid c;
  read_argument(&c, 1);
  candid def;
  if (opcode(&c, type_ref(&c), &def) != T_RECORD) fail("expected a token record");
  const u8 *key = 0;
  u32 key_len = 0;
  u64 index = 0;
  int have_index = 0;
  u64 fields = uleb(&def);
  for (u64 f = 0; f < fields; f++) {
    u64 id = uleb(&def);
    i64 ft = type_ref(&def);
    if (id == FIELD_KEY) {
      key = read_bytes(&c, ft, 0, &key_len);
    } else if (id == FIELD_INDEX && ft == T_NAT64) {
      skip(&c, 8);
      for (int i = 0; i < 8; i++) index |= (u64)c.p[i - 8] << (8 * i);
      have_index = 1;
    } else {
      skip_value(&c, ft, 1);
    }
  }
  if (!key || !have_index) fail("the token has no key or no index : nat64");
  int k = find(key, key_len);
  if (k < 0) fail("no asset has this path (was it deleted while streaming?)");
  const asset *a = &assets[k];
  if (index == 0 || a->body_len == 0 || index > (a->body_len - 1) / CHUNK) fail("the token's index is past the body");
  u64 from = index * CHUNK;
  u32 n = a->body_len - from > CHUNK ? CHUNK : (u32)(a->body_len - from);
  buf b = {scratch(1024), 0, 1024};
  static const u8 answer[] = {1, 9}; /* one value, of type 9 */
  put_bytes(&b, TYPES, sizeof TYPES);
  put_bytes(&b, answer, 2);
  if (from + n < a->body_len) {
    put_byte(&b, 1);
    put_token(&b, a, index + 1);
  } else {
    put_byte(&b, 0);
  }
  put_uleb(&b, n);
  ic0_msg_reply_data_append(b.p, b.len);
  reply_body(a, from, n);
  ic0_msg_reply();
}
