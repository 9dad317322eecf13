// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Reading raw HTTP/1.x request bytes in the kernel: is this a request line,
// and its traceparent and user-agent headers. Included by http.bpf.c only.
#ifndef ZEROTEL_HTTP_HEADERS_H
#define ZEROTEL_HTTP_HEADERS_H

/* ---- traceparent and user-agent from the raw request header bytes ---- */

static __always_inline int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

// Parses "00-<32 hex trace id>-<16 hex span id>-<2 hex flags>" at p.
static __always_inline bool parse_traceparent(const char *p, struct server_req *ev)
{
	if (p[0] != '0' || p[1] != '0' || p[2] != '-' || p[35] != '-' || p[52] != '-')
		return false;
	__u8 any = 0;
	for (int i = 0; i < 16; i++) {
		int hi = hexval(p[3 + 2 * i]), lo = hexval(p[4 + 2 * i]);
		if (hi < 0 || lo < 0)
			return false;
		ev->trace_id[i] = hi << 4 | lo;
		any |= ev->trace_id[i];
	}
	for (int i = 0; i < 8; i++) {
		int hi = hexval(p[36 + 2 * i]), lo = hexval(p[37 + 2 * i]);
		if (hi < 0 || lo < 0)
			return false;
		ev->parent_span_id[i] = hi << 4 | lo;
		any |= ev->parent_span_id[i];
	}
	int f = hexval(p[54]);
	if (!any || f < 0)
		return false;
	ev->sampled = f & 1;
	return true;
}

struct hdr_scan {
	struct scratch *s;
	__u32 len;
	__u32 first_nl; // index of the first '\n': the end of the request line
	bool found_tp;
};

static __always_inline char lower(char c)
{
	return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

// bpf_loop step over 8-byte words: only words holding a '\n' are looked at
// byte by byte, so the cost follows the number of header lines.
static long scan_word(__u32 w, struct hdr_scan *sc)
{
	__u32 base = w * 8;
	if (base >= sc->len || base >= HDR_MAX)
		return 1;
	struct scratch *s = sc->s;
	__u64 word = 0;
	__builtin_memcpy(&word, &s->hdr[base & (HDR_MAX - 1)], 8);
	__u64 x = word ^ 0x0a0a0a0a0a0a0a0aULL;
	if (!((x - 0x0101010101010101ULL) & ~x & 0x8080808080808080ULL))
		return 0;
	for (int k = 0; k < 8; k++) {
		__u32 i = (base + k) & (HDR_MAX - 1);
		if (s->hdr[i] != '\n')
			continue;
		if (!sc->first_nl)
			sc->first_nl = base + k;
		const char *l = &s->hdr[i + 1];
		char c0 = lower(l[0]);
		if (c0 == 't' && !sc->found_tp && lower(l[1]) == 'r' && lower(l[2]) == 'a' &&
		    lower(l[5]) == 'p' && lower(l[10]) == 't' && l[11] == ':') {
			// "traceparent:" (colon at i+12), an optional space, then
			// the 55-byte value.
			__u32 v = i + 14;
			if (s->hdr[(i + 13) & (HDR_MAX - 1)] != ' ')
				v = i + 13;
			if (v + 55 <= sc->len && v < HDR_MAX)
				sc->found_tp = parse_traceparent(&s->hdr[v & (HDR_MAX - 1)], &s->req);
		} else if (c0 == 'h' && lower(l[1]) == 'o' && lower(l[2]) == 's' && lower(l[3]) == 't' &&
			   l[4] == ':') {
			// "host:" (colon at i+5), an optional space, then the value:
			// user space cuts it at "\r\n".
			__u32 v = i + 7;
			if (s->hdr[(i + 6) & (HDR_MAX - 1)] != ' ')
				v = i + 6;
			if (v < HDR_MAX)
				__builtin_memcpy(s->req.host, &s->hdr[v & (HDR_MAX - 1)], REQ_HOST_LEN);
		} else if (c0 == 'u' && lower(l[1]) == 's' && lower(l[4]) == '-' &&
			   lower(l[5]) == 'a' && l[10] == ':') {
			// "user-agent:" (colon at i+11), an optional space, then the
			// value: user space cuts it at "\r\n".
			__u32 v = i + 13;
			if (s->hdr[(i + 12) & (HDR_MAX - 1)] != ' ')
				v = i + 12;
			if (v < HDR_MAX)
				__builtin_memcpy(s->req.user_agent, &s->hdr[v & (HDR_MAX - 1)], UA_LEN);
		}
	}
	return 0;
}

// Parses the request line that ends at hdr[nl] ("GET /a?b HTTP/1.1\r\n")
// into r: the method's length, the target's, the minor HTTP version, and
// the line itself. first, if not 0, is the line's first byte, which an
// earlier 1-byte read took. Returns false if it is not an HTTP/1.x request
// line.
static __always_inline bool parse_request_line(struct scratch *s, __u32 nl, char first, struct server_req *r)
{
	if (nl < 14 || nl >= HDR_MAX)
		return false;
	const char *v = &s->hdr[(nl - 9) & (HDR_MAX - 1)];
	if (v[0] != 'H' || v[1] != 'T' || v[2] != 'T' || v[3] != 'P' || v[4] != '/' || v[5] != '1' || v[6] != '.' ||
	    v[8] != '\r')
		return false;
	__u32 m = 0;
	for (int i = 7; i > 0; i--) // methods are at most 7 bytes (OPTIONS)
		if (s->hdr[i - (first != 0)] == ' ')
			m = i;
	__u32 end = nl - 10 + (first != 0); // the space before "HTTP/1.x"
	if (!m || end <= m + 1)
		return false;
	__u32 n = end - m - 1;
	if (n > LINE_LEN - m - 1)
		n = LINE_LEN - m - 1;
	r->method_len = m;
	r->target_len = n;
	r->proto_minor = v[7] - '0';
	if (first) {
		r->line[0] = first;
		__builtin_memcpy(&r->line[1], s->hdr, LINE_LEN - 1);
	} else {
		__builtin_memcpy(r->line, s->hdr, LINE_LEN);
	}
	return true;
}

// The first 4 bytes of a request line, as a little-endian word.
#define W4(a, b, c, d) ((__u32)(a) | (__u32)(b) << 8 | (__u32)(c) << 16 | (__u32)(d) << 24)

static __always_inline bool is_method(__u32 w)
{
	return w == W4('G', 'E', 'T', ' ') || w == W4('P', 'O', 'S', 'T') || w == W4('P', 'U', 'T', ' ') ||
	       w == W4('H', 'E', 'A', 'D') || w == W4('D', 'E', 'L', 'E') || w == W4('P', 'A', 'T', 'C') ||
	       w == W4('O', 'P', 'T', 'I') || w == W4('C', 'O', 'N', 'N') || w == W4('T', 'R', 'A', 'C');
}

#endif
