-- Argo CD health of a fintech.dev Card (Lua 5.1, as Argo CD runs it; `obj` is the Card).
-- Active and Closed are settled; Frozen is Suspended (on hold by choice); PendingReview waits
-- for a person (a CardReview); Rejected and a refused close are Degraded; the rest Progressing.
local function condition(status, type_)
  if status == nil or status.conditions == nil then return nil end
  for _, c in ipairs(status.conditions) do
    if c.type == type_ then return c end
  end
  return nil
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then return c.message end
  return fallback
end

local hs = {}
local status = obj.status or {}
local wanted = (obj.spec or {}).state or "Active"
local phase = status.phase
local ready = condition(status, "Ready")

if phase == nil or phase == "Pending" then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to issue the card"
elseif phase == "Rejected" then
  hs.status = "Degraded"
  hs.message = "Rejected: " .. (status.reason or "") .. " " .. (status.message or "")
elseif phase == "PendingReview" then
  hs.status = "Suspended"
  hs.message = "Waiting for a review (apply a CardReview): " .. (status.message or "")
elseif phase == "Closed" then
  hs.status = "Healthy"
  hs.message = "Closed; its ledger history is kept"
elseif ready ~= nil and ready.status == "False" and ready.reason == "BalanceNotZero" then
  hs.status = "Degraded"
  hs.message = text(ready, "Closing waits for a zero balance")
elseif wanted ~= phase then
  hs.status = "Progressing"
  hs.message = "Changing from " .. phase .. " to " .. wanted
elseif phase == "Frozen" then
  hs.status = "Suspended"
  hs.message = "Frozen: postings are refused until spec.state is Active"
elseif phase == "Active" then
  hs.status = "Healthy"
  hs.message = "Active, last 4 " .. (status.last4 or "?")
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
