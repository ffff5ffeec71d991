"""Operations: metrics, status page and line, dead-letter tooling, connection checks.
Imported by the public app, onestep.http and the CLI; heavy deps stay in their modules."""
