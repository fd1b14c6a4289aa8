"""Report generator: reads run records (their schema is ``SCHEMA.md`` beside the report) and
writes ``REPORT.md``, tables and figures. Entry point: ``python report.py``; library entry
point :func:`reporting.generate.generate`."""
