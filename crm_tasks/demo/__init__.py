"""Demo data: a generator of realistic landing files (five locales, their scripts, 1% defects)."""
