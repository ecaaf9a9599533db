-- Argo CD health of a fintech.dev CardReview (Lua 5.1; `obj` is the CardReview).
-- Recorded is Healthy; Refused (the card was not waiting, or another review won) is Degraded.
local hs = {}
local status = obj.status or {}
if status.phase == "Recorded" then
  hs.status = "Healthy"
  hs.message = "Decision recorded"
elseif status.phase == "Refused" then
  hs.status = "Degraded"
  hs.message = "Refused: " .. (status.reason or "") .. " " .. (status.message or "")
else
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to record the decision"
end
return hs
