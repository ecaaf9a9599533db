-- Argo CD health of a fintech.dev ReconciliationRun (Lua 5.1; `obj` is the run).
-- A run that completed and agreed is Healthy; one that found discrepancies (the Reconciled
-- condition is False) or could not run is Degraded; Pending and Running are Progressing.
local function condition(status, type_)
  if status.conditions == nil then return nil end
  for _, c in ipairs(status.conditions) do
    if c.type == type_ then return c end
  end
  return nil
end

local hs = {}
local status = obj.status or {}
if status.phase == "Succeeded" then
  local reconciled = condition(status, "Reconciled")
  if reconciled ~= nil and reconciled.status == "False" then
    hs.status = "Degraded"
    hs.message = "Discrepancies found: " .. (reconciled.message or reconciled.reason or "see status.summary")
  else
    hs.status = "Healthy"
    hs.message = "Reconciled"
  end
elseif status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = "Failed: " .. (status.reason or "") .. " " .. (status.message or "")
elseif status.phase == "Running" then
  hs.status = "Progressing"
  hs.message = "Running"
else
  hs.status = "Progressing"
  hs.message = "Waiting to start"
end
return hs
