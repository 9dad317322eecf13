package http

import "testing"

func TestSplitTarget(t *testing.T) {
	for _, tc := range []struct{ target, path, query string }{
		{"/", "/", ""},
		{"/users/42", "/users/42", ""},
		{"/search?q=a%20b&x=1", "/search", "q=a%20b&x=1"},
		{"/a%2Fb?", "/a%2Fb", ""},
		{"http://example.com/p?x=1", "/p", "x=1"},
		{"https://example.com", "/", ""},
		{"http://example.com?x=1", "/", "x=1"},
		{"*", "*", ""}, // OPTIONS *
	} {
		path, query := splitTarget(tc.target)
		if path != tc.path || query != tc.query {
			t.Errorf("splitTarget(%q) = %q, %q; want %q, %q", tc.target, path, query, tc.path, tc.query)
		}
	}
}

func TestHeaderValue(t *testing.T) {
	for in, want := range map[string]string{
		"example.com:8080\r\nAccept: */*": "example.com:8080",
		"curl/8.0\n":                      "curl/8.0",
		"short\x00\x00":                   "short",
		"no end":                          "no end",
	} {
		if got := headerValue(in); got != want {
			t.Errorf("headerValue(%q) = %q, want %q", in, got, want)
		}
	}
}
