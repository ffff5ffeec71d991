"""Built-in sources: MemoryQueue and the schedules (interval, cron). Imported by the
public package, the dead-letter tooling and `--processes`' preflight checks."""
