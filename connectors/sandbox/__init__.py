"""Local fake provider servers for `touchhub demo`, `touchhub serve --sandbox` and the tests.

Each fake speaks its provider's wire protocol on a loopback port, so the real
client libraries (the `twilio` package, ...) talk to it unchanged and the code
under test is the code production runs. The fakes fail loudly: they record
every request they receive, answer unknown paths with the provider's own "not
found" error, and can be told to fail the next requests so retries can be
tested end to end.
"""
