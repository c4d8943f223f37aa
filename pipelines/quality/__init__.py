"""Data quality: Great Expectations suites kept as data under expectations/."""
