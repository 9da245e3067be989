# One image for both roles: `messenger serve …` (the default) or `worker`.
FROM python:3.11-slim
COPY --from=ghcr.io/astral-sh/uv:0.9 /uv /usr/local/bin/uv
WORKDIR /app
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project
COPY shared ./shared
COPY worker ./worker
COPY messenger ./messenger
COPY prompts ./prompts
RUN uv sync --locked --no-dev && useradd --uid 10001 --no-create-home app
USER app
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1
EXPOSE 8000
CMD ["messenger", "serve", "--transport", "http", "--host", "0.0.0.0", "--port", "8000"]
