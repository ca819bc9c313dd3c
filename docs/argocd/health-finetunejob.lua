-- Argo CD health check for finetune.dev/FineTuneJob (resource.customizations.health.finetune.dev_FineTuneJob).
-- Phases: Pending/WaitingForSweep/Sweeping/Running -> Progressing, Succeeded -> Healthy,
-- Failed -> Degraded; no status yet, or a status older than the spec -> Progressing.
local hs = {}

local function condition_message(status, wanted)
  if status.conditions ~= nil then
    for _, c in ipairs(status.conditions) do
      if c.type == wanted and c.status == "True" and c.message ~= nil and c.message ~= "" then
        return c.message
      end
    end
  end
  return nil
end

if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the finetune-operator to pick up the FineTuneJob"
  return hs
end

local status = obj.status
local generation = obj.metadata ~= nil and obj.metadata.generation or nil
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the finetune-operator to observe generation " .. tostring(generation)
  return hs
end

local phase = status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  if status.evalLoss ~= nil then
    hs.message = string.format("Finished: eval loss %.4g", status.evalLoss)
  else
    hs.message = status.message or "Succeeded"
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = condition_message(status, "Failed") or status.message or "Failed"
elseif phase == "Pending" or phase == "WaitingForSweep" or phase == "Sweeping" or phase == "Running" then
  hs.status = "Progressing"
  hs.message = status.message or phase
  if phase == "Running" and status.progress ~= nil and status.progress.percent ~= nil then
    hs.message = "Running: " .. tostring(status.progress.percent) .. "%"
  elseif phase == "WaitingForSweep" and status.sweepName ~= nil then
    hs.message = "Waiting for LRSweep " .. status.sweepName
  end
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
