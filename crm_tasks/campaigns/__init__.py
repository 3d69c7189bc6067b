"""Stage 3, campaigns: who gets which message on a day, and why the others do not.

``definitions`` loads and validates ``campaigns/*.yaml``; ``audience`` selects whom a trigger
names on a date; ``planning`` applies exclusions with reasons, the holdout and guardrails,
and writes the plan and the send ledger; ``coupons`` issues codes and matches redemptions.
"""
