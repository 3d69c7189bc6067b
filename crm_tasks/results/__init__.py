"""Success measures: did a campaign work, and does the programme as a whole?

``attribution`` credits purchases to messages, ``campaigns`` measures every run's treatment against its
holdout (and A/B variants against each other), ``control`` the marketed customers against the global
control group, ``lift`` and ``stats`` hold the statistics, and ``reports`` reads the stored results back
for the CLI, the demo and the pages. ``refresh_results`` (in ``campaigns``) runs it all for an as-of date.
"""
