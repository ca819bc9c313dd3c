-- Argo CD health check for finetune.dev/LRSweep (resource.customizations.health.finetune.dev_LRSweep).
-- Reads what the operator writes (docs/gitops.md): Ready=True (phase Succeeded) -> Healthy;
-- Stalled=True (phase Failed, or blocked until a person acts) -> Degraded; otherwise Progressing.
-- No status yet, or a status older than the spec -> Progressing.
local hs = {}

local function condition(status, wanted)
  if status.conditions ~= nil then
    for _, c in ipairs(status.conditions) do
      if c.type == wanted then
        return c
      end
    end
  end
  return nil
end

local function holds(c)
  return c ~= nil and c.status == "True"
end

local function said(c)
  if holds(c) and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return nil
end

if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the finetune-operator to pick up the LRSweep"
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
local ready = condition(status, "Ready")
local stalled = condition(status, "Stalled")
local failed = condition(status, "Failed")
local active = phase == "Pending" or phase == "Running"
if holds(ready) or phase == "Succeeded" then
  hs.status = "Healthy"
  if status.recommendedLearningRate ~= nil then
    hs.message = string.format("Recommended learning rate %.3g", status.recommendedLearningRate)
    if status.rule ~= nil then
      hs.message = hs.message .. " (" .. status.rule .. ")"
    end
  else
    hs.message = status.message or "Succeeded"
  end
elseif holds(stalled) or holds(failed) or phase == "Failed" then
  hs.status = "Degraded"
  hs.message = said(stalled) or said(failed) or status.message or phase
elseif active then
  hs.status = "Progressing"
  hs.message = status.message or phase
  if status.progress ~= nil and status.progress.percent ~= nil then
    hs.message = phase .. ": " .. tostring(status.progress.percent) .. "%"
  end
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
