-- Argo CD health of a fintech.dev Webhook (Lua 5.1; `obj` is the Webhook).
-- Active (a notifier serves it) is Healthy; Suspended (spec.suspend) is Suspended; Failing
-- (the endpoint keeps failing) and Rejected (a spec the notifier cannot serve) are Degraded;
-- Pending means no notifier has picked it up yet.
local hs = {}
local status = obj.status or {}
local why = (status.reason or "") .. " " .. (status.message or "")
if status.phase == "Active" then
  hs.status = "Healthy"
  hs.message = "Delivering"
elseif status.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "Suspended (spec.suspend): events wait in the queue"
elseif status.phase == "Failing" then
  hs.status = "Degraded"
  hs.message = "Failing: " .. why
elseif status.phase == "Rejected" then
  hs.status = "Degraded"
  hs.message = "Rejected: " .. why
else
  hs.status = "Progressing"
  hs.message = "Waiting for a notifier to serve it"
end
return hs
