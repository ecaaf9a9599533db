-- Argo CD health of a fintech.dev ReconciliationSchedule (Lua 5.1; `obj` is the schedule).
local hs = {}
local status = obj.status or {}
if status.phase == "Active" then
  hs.status = "Healthy"
  hs.message = "Next run at " .. tostring(status.nextScheduleTime)
elseif status.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "Suspended (spec.suspend)"
elseif status.phase == "Invalid" then
  hs.status = "Degraded"
  hs.message = "Invalid schedule; see the Ready condition"
else
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to check the schedule"
end
return hs
