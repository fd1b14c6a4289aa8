"""Report generator: reads run records under ``runs/`` (schema in
``reports/SCHEMA.md``) and writes ``REPORT.md``, tables and figures. Entry point:
``python report.py``; library entry point :func:`reporting.generate.generate`."""
