"""The review's protocol: which runs, with which settings, and what each writes.

- ``profiles``: the protocols (``quick``, ``standard``, ``paper``) and their per-architecture options;
- ``sweep``: resolves and hashes every (architecture, seed) configuration, runs each in a worker
  process, resumes and skips finished runs; ``worker``: one run (measure, train, preview);
- ``record``: what a finished or failed run left, read back as one typed ``RunRecord``;
- ``review_speed``: the review's Speed section, measured after the runs;
- ``review_input``: what the report of a plan reads besides the run folders (a ``record.ReviewInput``).
"""
