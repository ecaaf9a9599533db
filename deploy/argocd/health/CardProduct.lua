-- Argo CD health of a fintech.dev CardProduct (Lua 5.1; `obj` is the CardProduct).
local hs = {}
local status = obj.status or {}
if status.phase == "Ready" then
  hs.status = "Healthy"
  hs.message = "Ready; cards using it: " .. tostring(status.cards or 0)
elseif status.phase == "Rejected" then
  hs.status = "Degraded"
  hs.message = "Rejected: " .. (status.reason or "") .. " " .. (status.message or "")
else
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to check the product"
end
return hs
