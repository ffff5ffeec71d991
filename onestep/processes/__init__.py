"""`--processes N`: the supervisor of N worker processes, the worker's link to it, the
preflight checks and the inherited listening sockets. Imported by the public app and CLI."""
