"""One folder per profile kind: its kernel side seen from user space (recorder), how its
samples become a profile (build), and its hooks into the recording skeleton (session)."""
