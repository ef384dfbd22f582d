-- Orthanc: send each stable CT series to Service4CT by STOW-RS (the DICOMweb peer "service4ct",
-- configured with the client's API key and X-Service4CT-Predict; see docs/interop.md).
-- Only CT series are routed: the SR and Secondary Capture the service pushes back into the
-- study are never sent again.
function OnStableSeries(seriesId, tags, metadata)
  if tags['Modality'] == 'CT' then
    RestApiPost('/dicom-web/servers/service4ct/stow', DumpJson({ Resources = { seriesId } }))
  end
end
