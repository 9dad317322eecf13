// pprof labels and goroutine ids of the goroutine a sample ran on, shared by cpu.c
// and mem.c.
//
// From a thread's g (cpu.c: thread-local storage at the FS base; mem.c: R14, which
// holds g in Go code) to the user goroutine, as runtime/pprof's own CPU profile
// does: g.m.curg. That skips g0 and gsignal; a thread running no user goroutine
// (curg == 0) has no labels. curg.m must point back to the m, else nothing is
// read: garbage (a thread that is not Go's) never gives a label.
//
// g.labels is a *labelMap: up to Go 1.23 it points to a map[string]string (one
// more load: the map header; a map of up to 8 labels lives in bucket 0), from 1.24
// to a slice of {key, value string} sorted by key. At most MAX_LABELS labels, keys
// cut to LABEL_KEY_MAX bytes and values to LABEL_VALUE_MAX: such a set is
// "capped" (counted by the caller).
//
// A sample keys its labels by a fingerprint of the label set's pointers (the
// labelMap, the slice or buckets, every string's pointer and length); the strings
// are copied once per window into labelsN, keyed by that fingerprint. Go never
// changes a label set in place (pprof.WithLabels makes a new one), so a
// fingerprint names one content for as long as that memory is not freed and
// reused, exactly alike, within one window.
//
// Map sizes are placeholders: user space creates the maps with its own sizes.

#define MAX_LABELS 10
#define LABEL_KEY_MAX 64
#define LABEL_VALUE_MAX 128
#define MAP_BUCKET_SLOTS 8     // a Go map bucket (<= 1.23) holds 8 entries
#define MIN_TOP_HASH 5         // tophash values below this mark empty slots

#define LABELS_NONE 0          // labels_format: not a Go program, or not known yet
#define LABELS_MAP 1           // Go <= 1.23
#define LABELS_SLICE 2         // Go 1.24+

// What the label reading needs of a target's runtime (struct offsets of its Go
// version, from DWARF or goprof's table); all zero when it is not a Go program.
struct go_info {
    s32 tls_g;                 // g's offset from the thread's FS base (cpu.c only)
    u16 g_m;
    u16 g_goid;
    u16 g_labels;
    u16 m_curg;
    u8 labels_format;          // LABELS_*
    u8 pad[3];
};

struct label_set {
    u32 count;                 // labels kept
    u32 capped;                // 1: the goroutine had more labels, or longer ones
    u8 key_len[MAX_LABELS];
    u8 value_len[MAX_LABELS];
    // Flat (label i at i * LABEL_KEY_MAX): bcc describes a two-dimensional array to
    // user space as its first dimension only, and would size the map's values wrong.
    u8 keys[MAX_LABELS * LABEL_KEY_MAX];
    u8 values[MAX_LABELS * LABEL_VALUE_MAX];
    u8 pad[4];                 // 8-byte aligned: bcc wants per-CPU values that are
};

struct go_string {
    u64 ptr;
    u64 len;
};

struct go_label {
    struct go_string key;
    struct go_string value;
};

// A map bucket of map[string]string (Go <= 1.23): tophash, keys, values, overflow.
struct go_map_bucket {
    u8 tophash[MAP_BUCKET_SLOTS];
    struct go_string keys[MAP_BUCKET_SLOTS];
    struct go_string values[MAP_BUCKET_SLOTS];
};

struct label_work {
    struct go_label raw[MAX_LABELS];
    struct go_map_bucket bucket;
    struct label_set set;
};

BPF_PERCPU_ARRAY(labels_scratch, struct label_work, 1);
// One per window: fingerprint -> the label set's strings.
BPF_HASH(labels0, u64, struct label_set, 1024);
BPF_HASH(labels1, u64, struct label_set, 1024);

// What read_labels says besides the fingerprint (a bit set).
#define LABELS_UNREAD 1        // the goroutine or its labels could not be read
#define LABELS_CAPPED 2        // more labels, or longer, than kept
#define LABELS_FULL 4          // the window's label map had no room

static __always_inline u64 read_word(u64 address) {
    u64 v = 0;
    if (bpf_probe_read_user(&v, sizeof(v), (void *)address))
        return 0;
    return v;
}

// The user goroutine of the thread whose g is `g`: 0 when there is none or it does
// not check out (curg.m must be g.m).
static __always_inline u64 user_goroutine(u64 g, struct go_info *go) {
    if (!g)
        return 0;
    u64 m = read_word(g + go->g_m);
    if (!m)
        return 0;
    u64 curg = read_word(m + go->m_curg);
    if (!curg || read_word(curg + go->g_m) != m)
        return 0;
    return curg;
}

// The labels' raw string headers into s->raw; returns how many (<= MAX_LABELS) and
// folds the pointers into *fp. -1 when unreadable.
static __always_inline int raw_labels(u64 labels, struct go_info *go,
                                      struct label_work *s, u64 *fp, int *status) {
    u64 h = mix_word(0x84222325cbf29ce4ULL, labels);
    int n = 0;
    if (go->labels_format == LABELS_SLICE) {
        // labelMap{LabelSet{list []label}}: the slice header is at the pointer.
        struct go_string list = {};   // ptr, len (cap not needed)
        if (bpf_probe_read_user(&list, sizeof(list), (void *)labels))
            return -1;
        h = mix_word(mix_word(h, list.ptr), list.len);
        u64 len = list.len;
        if (len > MAX_LABELS) {
            len = MAX_LABELS;
            *status |= LABELS_CAPPED;
        }
        for (int i = 0; i < MAX_LABELS; i++) {
            if (i >= len)
                break;
            if (bpf_probe_read_user(&s->raw[i], sizeof(struct go_label),
                                    (void *)(list.ptr + i * sizeof(struct go_label))))
                return -1;
            n++;
        }
    } else {
        // *labelMap is a map[string]string: the map's header, then bucket 0.
        u64 hmap = read_word(labels);
        if (!hmap)
            return 0;   // an empty map
        u8 header[24] = {};   // count (int), flags, B, noverflow, hash0, buckets
        if (bpf_probe_read_user(header, sizeof(header), (void *)hmap))
            return -1;
        u64 count = *(u64 *)&header[0];
        u8 b = header[9];
        u64 buckets = *(u64 *)&header[16];
        h = mix_word(mix_word(h, buckets), count);
        if (!buckets || count == 0)
            return 0;
        if (b != 0 || count > MAP_BUCKET_SLOTS)
            *status |= LABELS_CAPPED;   // more than one bucket: only bucket 0 is read
        if (bpf_probe_read_user(&s->bucket, sizeof(s->bucket), (void *)buckets))
            return -1;
        for (int i = 0; i < MAP_BUCKET_SLOTS; i++) {
            if (s->bucket.tophash[i] < MIN_TOP_HASH)
                continue;
            if (n >= MAX_LABELS)
                break;
            s->raw[n].key = s->bucket.keys[i];
            s->raw[n].value = s->bucket.values[i];
            n++;
        }
    }
    for (int i = 0; i < MAX_LABELS; i++) {
        if (i >= n)
            break;
        h = mix_word(mix_word(h, s->raw[i].key.ptr), s->raw[i].key.len);
        h = mix_word(mix_word(h, s->raw[i].value.ptr), s->raw[i].value.len);
        // Said at every sample, not only when the strings are first copied.
        if (s->raw[i].key.len > LABEL_KEY_MAX || s->raw[i].value.len > LABEL_VALUE_MAX)
            *status |= LABELS_CAPPED;
    }
    *fp = h ? h : 1;
    return n;
}

// Reads a Go string into dst, at most max bytes (a power of two): one fixed-size read,
// which keeps the verifier's work small (a read of a computed size costs it a branch per
// label), and exactly the string when that fails (a short string at the very end of a
// mapping). Non-zero when the string cannot be read.
#define read_go_string(dst, max, str)                                             \
    (bpf_probe_read_user((dst), (max), (void *)(str).ptr) &&                      \
     ((str).len >= (max) ||                                                       \
      bpf_probe_read_user((dst), (str).len & ((max) - 1), (void *)(str).ptr)))

// Copies the strings of n raw labels into s->set (their lengths cut to the caps; the
// caller already knows whether any was cut).
static __always_inline int copy_strings(struct label_work *s, int n, int *status) {
    s->set.count = n;
    s->set.capped = (*status & LABELS_CAPPED) ? 1 : 0;
    for (int i = 0; i < MAX_LABELS; i++) {
        if (i >= n)
            break;
        struct go_label *l = &s->raw[i];
        if (read_go_string(&s->set.keys[i * LABEL_KEY_MAX], LABEL_KEY_MAX, l->key) ||
            read_go_string(&s->set.values[i * LABEL_VALUE_MAX], LABEL_VALUE_MAX, l->value))
            return -1;
        s->set.key_len[i] = l->key.len < LABEL_KEY_MAX ? l->key.len : LABEL_KEY_MAX;
        s->set.value_len[i] = l->value.len < LABEL_VALUE_MAX ? l->value.len : LABEL_VALUE_MAX;
    }
    return 0;
}

// The fingerprint of the labels of the user goroutine behind `g` (0: none), their
// strings kept in the window's label map; its goroutine id into *goid when asked.
static __always_inline u64 read_labels(u64 g, struct go_info *go, u32 window, int want_goid,
                                       u64 *goid, int *status) {
    if (go->labels_format == LABELS_NONE)
        return 0;
    u64 curg = user_goroutine(g, go);
    if (!curg)
        return 0;
    if (want_goid)
        *goid = read_word(curg + go->g_goid);
    u64 labels = read_word(curg + go->g_labels);
    if (!labels)
        return 0;
    int zero = 0;
    struct label_work *s = labels_scratch.lookup(&zero);
    if (!s)
        return 0;
    u64 fp = 0;
    int n = raw_labels(labels, go, s, &fp, status);
    if (n < 0) {
        *status |= LABELS_UNREAD;
        return 0;
    }
    if (n == 0)
        return 0;
    if ((window ? labels1.lookup(&fp) : labels0.lookup(&fp)) != 0)
        return fp;
    if (copy_strings(s, n, status)) {
        *status |= LABELS_UNREAD;
        return 0;
    }
    int err = window ? labels1.insert(&fp, &s->set) : labels0.insert(&fp, &s->set);
    if (err && err != -EEXIST) {
        *status |= LABELS_FULL;
        return 0;
    }
    return fp;
}
