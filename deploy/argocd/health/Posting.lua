-- Argo CD health of a fintech.dev Posting (Lua 5.1; `obj` is the Posting).
-- A decided posting never changes: Posted is Healthy, Rejected is Degraded (fix it with a new
-- Posting, never by editing this one); undecided is Progressing.
local hs = {}
local status = obj.status or {}
if status.phase == "Posted" then
  hs.status = "Healthy"
  hs.message = "Posted as journal " .. tostring(status.journalId)
elseif status.phase == "Rejected" then
  hs.status = "Degraded"
  hs.message = "Rejected: " .. (status.reason or "") .. " " .. (status.message or "")
else
  hs.status = "Progressing"
  hs.message = "Waiting for the ledger"
end
return hs
