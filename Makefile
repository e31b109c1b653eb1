.PHONY: run test check openapi bench bench-stream bench-coldstart bench-upkeep bench-all demo format

run:     ## start the server on http://127.0.0.1:8080 (embedded PostgreSQL unless DATABASE_URL is set)
	bash scripts/run

test:    ## lint, types, OpenAPI drift, and the whole test suite
	bash scripts/test

check:   ## lint, types, OpenAPI drift only
	bash scripts/check

openapi: ## regenerate openapi.yaml from the app
	bash scripts/bootstrap && .venv/bin/virtualq openapi --output openapi.yaml

format:  ## apply ruff's formatting and safe fixes
	bash scripts/bootstrap && .venv/bin/ruff format src tests bench && .venv/bin/ruff check --fix src tests bench

bench:   ## run the benchmark suite against a fresh server (see bench/README.md)
	bash scripts/bootstrap && .venv/bin/python bench/run.py

bench-stream:   ## 1,000 SSE clients and webhook throughput against a fresh server (see bench/README.md)
	bash scripts/bootstrap && .venv/bin/python bench/stream.py

bench-coldstart:   ## time from launch to ready on the embedded defaults, first and warm starts (see bench/README.md)
	bash scripts/bootstrap && .venv/bin/python bench/coldstart.py

bench-upkeep:   ## table growth and churn under load, and pruning a backlog of old events (see bench/README.md)
	bash scripts/bootstrap && .venv/bin/python bench/upkeep.py

bench-all:   ## every benchmark in turn, then one table against the targets (see bench/README.md)
	bash scripts/bootstrap && .venv/bin/python bench/all.py

demo:   ## create demo tenants (coffee chain, DMV) with keys and print the pages' URLs
	bash scripts/bootstrap && .venv/bin/virtualq demo
