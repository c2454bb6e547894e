// uPlot's IIFE build (served as uplot.min.js) defines the global `uPlot` before dashboard.js runs.
import type uPlotClass from 'uplot';

declare global {
  const uPlot: typeof uPlotClass;
}
