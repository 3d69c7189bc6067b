"""Stage 4, messages: what a planned message says and how it is encoded. All pure, no I/O.

``render`` turns a campaign and an allow-listed context into subject, HTML and text in the
customer's language (sandboxed Jinja, locale catalogs, right to left where needed); ``mime``
builds the multipart bytes with safe headers; ``preview`` checks every template and writes
previews for a customer.
"""
