# One image for both roles: `messenger serve …` (the default) or `worker`.
# --build-arg EXTRAS=bedrock installs boto3 for AI_PROVIDER=bedrock (left out by default: ~24 MB).
FROM python:3.11-slim
ARG EXTRAS=""
COPY --from=ghcr.io/astral-sh/uv:0.9 /uv /usr/local/bin/uv
WORKDIR /app
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
COPY pyproject.toml uv.lock README.md LICENSE ./
RUN uv sync --locked --no-dev --no-install-project ${EXTRAS:+--extra $EXTRAS}
COPY shared ./shared
COPY worker ./worker
COPY messenger ./messenger
COPY prompts ./prompts
RUN uv sync --locked --no-dev ${EXTRAS:+--extra $EXTRAS} && useradd --uid 10001 --no-create-home app
USER app
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1
EXPOSE 8000
CMD ["messenger", "serve", "--transport", "http", "--host", "0.0.0.0", "--port", "8000"]
