-- tool_executions_tenant_created_idx (0001) has the same key as
-- tool_executions_tenant_kpi_idx (0005, which adds INCLUDE columns), so
-- every query it served is served by the other. Each execution paid for it
-- twice: at the insert and at the outcome's update (not a HOT update, since
-- the status is in the KPI index).
DROP INDEX tool_executions_tenant_created_idx;
