"""Analytics: what is selling and who is slipping away, for the Monday figures.

``sales`` keeps the daily sales cube, ``clv`` scores customers' lifetime value (BG/NBD and Gamma-Gamma),
``forecast`` predicts daily revenue with its intervals and backtest. The ``crm_reports`` DAG refreshes them.
"""
