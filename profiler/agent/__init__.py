"""goprof agent: every Go process on a host (or those matching filters), profiled
window after window and delivered to Parca, Pyroscope or a directory."""
