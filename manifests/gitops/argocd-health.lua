-- Argo CD health check for istioinstall.io/IstioInstall. Add it to argocd-cm as
--   resource.customizations.health.istioinstall.io_IstioInstall: |
--     <this file>
-- It reads the kstatus conditions the operator writes.
local hs = { status = "Progressing", message = "Waiting for the operator" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
if obj.status.observedGeneration ~= nil and obj.metadata.generation ~= nil
   and obj.status.observedGeneration < obj.metadata.generation then
  hs.message = "The operator has not seen the latest spec yet"
  return hs
end
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Stalled" and c.status == "True" then
    return { status = "Degraded", message = c.message }
  end
end
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Ready" then
    if c.status == "True" then
      return { status = "Healthy", message = c.message }
    end
    hs.message = c.message
  end
end
return hs
