"""One APIRouter per resource: rules, health (liveness and readiness), metrics."""
