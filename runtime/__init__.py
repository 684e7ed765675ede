"""Process plumbing every steadyhand process uses: processes and ports, JSON-lines logs, crash points."""
