"""The labeling page: a Starlette app (``app``) served by the labeling service over HTTP, and its
static assets (``static/``), shipped in the package and never fetched from the internet."""
