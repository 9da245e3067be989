from openai_server import openai_server  # noqa: F401  (the fixture, shared with the other suites)
