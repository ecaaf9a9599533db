-- Argo CD health of a fintech.dev RiskPolicy (Lua 5.1; `obj` is the RiskPolicy).
-- Ready is Healthy; Rejected (invalid rules or a missing list) is Degraded.
local hs = {}
local status = obj.status or {}
if status.phase == "Ready" then
  hs.status = "Healthy"
  hs.message = "Ready"
elseif status.phase == "Rejected" then
  hs.status = "Degraded"
  hs.message = "Rejected: " .. (status.reason or "") .. " " .. (status.message or "")
else
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to check the policy"
end
return hs
